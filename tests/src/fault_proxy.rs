//! [`FaultProxy`]: a TCP proxy in front of an HTTP (S3) endpoint that corrupts request bodies on
//! demand — bytes changed after the client hashed them and before the service receives them.
//!
//! It is a real proxy, not a mock: every byte goes to the real server and every byte of its
//! answer comes back unchanged. Requests are parsed only as far as needed to find their bodies
//! (request line, headers, `Content-Length` or `Transfer-Encoding: chunked` framing), so HTTP/1.1
//! keep-alive connections carrying several requests work. While armed with [`Rule`]s, it flips
//! one byte (all eight bits) in the middle of the body of the next matching requests, and
//! records each one it corrupted.
//!
//! **Signed payloads.** A SigV4 request whose `x-amz-content-sha256` is the hex SHA-256 of its
//! body (the AWS SDK's default over plain http) is rejected by the service whatever else it
//! checks, so corrupting it only shows that payload signing works. Given the credentials
//! ([`FaultProxy::resigning`]), the proxy re-signs the corrupted request: the payload hash and the
//! signature then cover the corrupted bytes, as when the bytes change inside the client before it
//! signs them, and only the checks the client made in its own hashing pass (a read-back,
//! `Content-MD5`, `x-amz-checksum-*`) can catch it. Requests with `UNSIGNED-PAYLOAD` need no
//! re-signing and get none. The proxy checks that it reproduces the client's own signature before
//! it re-signs anything, so a request it cannot sign is never passed on altered.
//!
//! Listens on 127.0.0.1 only; the listener and every connection end when the proxy is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

mod sigv4;

/// Request heads longer than this are refused (the connection is closed): no S3 request has one.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes copied per read.
const COPY_BUF: usize = 64 * 1024;

/// Which requests to corrupt: all conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// HTTP method, e.g. `"PUT"` (compared case-insensitively).
    pub method: String,
    /// Substrings of the request target (path and query), e.g. `"/blobs/"`; all must appear.
    pub path_contains: Vec<String>,
    /// Only bodies longer than this many bytes (the `Content-Length`, or for chunked bodies
    /// `x-amz-decoded-content-length` when present).
    pub min_body: u64,
}

impl Rule {
    /// PUTs (PutObject, UploadPart) whose target contains `path_contains`, with a body longer
    /// than `min_body` bytes.
    pub fn put(path_contains: &str, min_body: u64) -> Rule {
        Rule {
            method: "PUT".into(),
            path_contains: vec![path_contains.into()],
            min_body,
        }
    }

    /// The same rule, for targets that also contain `more` (e.g. `"partNumber=2&"`).
    pub fn and_path_contains(mut self, more: &str) -> Rule {
        self.path_contains.push(more.into());
        self
    }

    fn matches(&self, head: &RequestHead) -> bool {
        head.method.eq_ignore_ascii_case(&self.method)
            && self.path_contains.iter().all(|p| head.target.contains(p))
            && head.body_len().is_some_and(|len| len > self.min_body)
    }
}

/// One request the proxy corrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupted {
    /// Its method.
    pub method: String,
    /// Its request target (path and query).
    pub target: String,
    /// Offset of the flipped byte in the body as sent (for chunked bodies: in the first chunk).
    pub offset: u64,
}

/// The credentials the proxy re-signs corrupted requests with (see the module docs).
#[derive(Clone)]
pub struct SigningKeys {
    /// Secret access key (the access key id and scope are taken from each request).
    pub secret_key: String,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKeys { secret_key: <redacted> }")
    }
}

#[derive(Debug, Default)]
struct State {
    /// Rules and how many corruptions each has left; the first that matches is used.
    armed: Vec<(Rule, usize)>,
    keys: Option<SigningKeys>,
    corrupted: Vec<Corrupted>,
    requests: usize,
}

impl State {
    /// Whether to corrupt the request with `head`; counts it down if so.
    fn take(&mut self, head: &RequestHead) -> bool {
        self.requests += 1;
        let matching = self
            .armed
            .iter_mut()
            .find(|(rule, left)| *left > 0 && rule.matches(head));
        match matching {
            Some((_, left)) => {
                *left -= 1;
                true
            }
            None => false,
        }
    }
}

/// A proxy on `127.0.0.1:<free port>` forwarding every connection to an upstream HTTP server,
/// corrupting the bodies of requests that match its [`Rule`] while armed. Stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port` or `host:port`), unarmed.
    pub async fn start(upstream: &str) -> anyhow::Result<FaultProxy> {
        let authority = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let upstream: SocketAddr = tokio::net::lookup_host(&authority)
            .await
            .with_context(|| format!("resolve {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to nothing"))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the fault proxy")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in the set, so dropping the proxy (aborting this task) ends them.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        connections.spawn(relay(client, upstream, shared.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(FaultProxy { addr, state, task })
    }

    /// The proxy's URL, `http://127.0.0.1:PORT`: use it as the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Re-signs the requests it corrupts with `secret_key` (see the module docs): what the
    /// service sees is then a correctly signed request with a corrupted body.
    pub fn resigning(self, secret_key: &str) -> Self {
        self.lock().keys = Some(SigningKeys {
            secret_key: secret_key.to_string(),
        });
        self
    }

    /// Corrupts the bodies of the next `count` requests that match `rule`, besides what rules
    /// armed before still corrupt (a request is corrupted at most once).
    pub fn arm(&self, rule: Rule, count: usize) {
        self.lock().armed.push((rule, count));
    }

    /// Stops corrupting; returns how many corruptions the rules still had left.
    pub fn disarm(&self) -> usize {
        self.lock().armed.drain(..).map(|(_, left)| left).sum()
    }

    /// Every request corrupted so far, in order.
    pub fn corrupted(&self) -> Vec<Corrupted> {
        self.lock().corrupted.clone()
    }

    /// How many requests passed through (corrupted or not).
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the proxy needs from a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestHead {
    method: String,
    target: String,
    /// Header names (lower-case) and values, in order.
    headers: Vec<(String, String)>,
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl RequestHead {
    fn parse(head: &[u8]) -> anyhow::Result<RequestHead> {
        let text = std::str::from_utf8(head).context("request head is not utf-8")?;
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(_version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("bad request line {request_line:?}");
        };
        let headers = lines
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l
                    .split_once(':')
                    .with_context(|| format!("bad header line {l:?}"))?;
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(RequestHead {
            method: method.to_string(),
            target: target.to_string(),
            headers,
        })
    }

    /// The head as bytes again (header names lower-cased).
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn framing(&self) -> anyhow::Result<Framing> {
        if self
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Framing::Chunked);
        }
        match self.header("content-length") {
            Some(len) => Ok(Framing::Length(
                len.parse()
                    .with_context(|| format!("bad content-length {len:?}"))?,
            )),
            None => Ok(Framing::None),
        }
    }

    /// The body's length as far as the head says (aws-chunked bodies: the decoded length).
    fn body_len(&self) -> Option<u64> {
        let decoded = self
            .header("x-amz-decoded-content-length")
            .and_then(|v| v.parse().ok());
        match self.framing().ok()? {
            Framing::None => Some(0),
            Framing::Length(n) => Some(decoded.unwrap_or(n)),
            Framing::Chunked => decoded,
        }
    }
}

/// Relays one client connection to `upstream`: responses unchanged, requests parsed one by one
/// (keep-alive) and their bodies corrupted when `state` says so.
async fn relay(client: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // the client sees its connection closed, as with a dead server
    };
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut requests = BufReader::with_capacity(COPY_BUF, client_read);
    let _ = relay_requests(&mut requests, &mut server_write, &state).await;
    let _ = server_write.shutdown().await;
    let _ = answers.await;
}

/// Copies requests from `from` to `to` until `from` ends, corrupting those `state` takes.
async fn relay_requests<R, W>(from: &mut R, to: &mut W, state: &Mutex<State>) -> anyhow::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while let Some(raw) = read_head(from).await? {
        let head = RequestHead::parse(&raw)?;
        let framing = head.framing()?;
        let (corrupt, keys) = {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            (state.take(&head), state.keys.clone())
        };
        let signed_payload = head
            .header("x-amz-content-sha256")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let offset = match (framing, corrupt, keys) {
            (Framing::Length(len), true, Some(keys)) if signed_payload => {
                // Re-signed: the body is read whole first (test bodies are small).
                let mut body = Vec::new();
                copy_exact(from, &mut body, len, None).await?;
                let at = len / 2;
                if let Some(byte) = body.get_mut(usize::try_from(at)?) {
                    *byte = !*byte;
                }
                let head = sigv4::resign(&head, &body, &keys.secret_key)?;
                to.write_all(&head).await?;
                to.write_all(&body).await?;
                Some(at)
            }
            (Framing::None, _, _) => {
                to.write_all(&raw).await?;
                None
            }
            (Framing::Length(len), _, _) => {
                to.write_all(&raw).await?;
                copy_exact(from, to, len, corrupt.then_some(len / 2)).await?
            }
            (Framing::Chunked, _, _) => {
                to.write_all(&raw).await?;
                copy_chunked(from, to, corrupt).await?
            }
        };
        to.flush().await?;
        if let Some(offset) = offset {
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .corrupted
                .push(Corrupted {
                    method: head.method,
                    target: head.target,
                    offset,
                });
        }
    }
    Ok(())
}

/// Reads one request head (through the empty line), or `None` at a clean end of the stream.
async fn read_head<R: AsyncBufRead + Unpin>(from: &mut R) -> anyhow::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        if from.read_until(b'\n', &mut head).await? == 0 {
            anyhow::ensure!(head.is_empty(), "connection closed inside a request head");
            return Ok(None);
        }
        anyhow::ensure!(
            head.len() <= MAX_HEAD,
            "request head longer than {MAX_HEAD}"
        );
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                head.clear(); // a stray empty line between requests
                continue;
            }
            return Ok(Some(head));
        }
    }
}

/// Copies exactly `len` bytes, flipping the byte at `flip` (an offset below `len`) if given;
/// returns the offset flipped.
async fn copy_exact<R, W>(
    from: &mut R,
    to: &mut W,
    len: u64,
    flip: Option<u64>,
) -> anyhow::Result<Option<u64>>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let flip = flip.filter(|at| *at < len);
    let mut buf = vec![0u8; COPY_BUF];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = from.read(&mut buf[..want]).await?;
        anyhow::ensure!(n > 0, "connection closed inside a request body");
        if let Some(at) = flip {
            if (done..done + n as u64).contains(&at) {
                let i = usize::try_from(at - done)?;
                buf[i] = !buf[i];
            }
        }
        to.write_all(&buf[..n]).await?;
        done += n as u64;
    }
    Ok(flip)
}

/// Copies a `Transfer-Encoding: chunked` body (chunks, last chunk, trailers), flipping the middle
/// byte of the first non-empty chunk when `corrupt`; returns the offset flipped in that chunk.
async fn copy_chunked<R, W>(from: &mut R, to: &mut W, corrupt: bool) -> anyhow::Result<Option<u64>>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut flipped = None;
    loop {
        let mut line = Vec::new();
        from.read_until(b'\n', &mut line).await?;
        anyhow::ensure!(
            line.ends_with(b"\n"),
            "connection closed inside a chunked body"
        );
        to.write_all(&line).await?;
        let text = std::str::from_utf8(&line)?.trim();
        let size_hex = text.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size line {text:?}"))?;
        if size == 0 {
            // Trailers, then the empty line that ends the body.
            loop {
                let mut trailer = Vec::new();
                from.read_until(b'\n', &mut trailer).await?;
                anyhow::ensure!(
                    trailer.ends_with(b"\n"),
                    "connection closed inside trailers"
                );
                to.write_all(&trailer).await?;
                if trailer == b"\r\n" || trailer == b"\n" {
                    return Ok(flipped);
                }
            }
        }
        let flip = (corrupt && flipped.is_none()).then_some(size / 2);
        flipped = flipped.or(copy_exact(from, to, size, flip).await?);
        let mut crlf = Vec::new();
        from.read_until(b'\n', &mut crlf).await?;
        to.write_all(&crlf).await?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A tiny HTTP/1.1 server: answers every request with `200` and a body of the form
    /// `<method> <target> <body bytes as hex>`, keeping the connection open.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    while let Some(raw) = read_head(&mut read).await.unwrap() {
                        let head = RequestHead::parse(&raw).unwrap();
                        let mut body = Vec::new();
                        match head.framing().unwrap() {
                            Framing::None => {}
                            Framing::Length(n) => {
                                copy_exact(&mut read, &mut body, n, None).await.unwrap();
                            }
                            Framing::Chunked => {
                                let mut raw_body = Vec::new();
                                copy_chunked(&mut read, &mut raw_body, false).await.unwrap();
                                body = dechunk(&raw_body);
                            }
                        }
                        let answer = format!("{} {} {}", head.method, head.target, hex(&body));
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        write.write_all(response.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        addr
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The data of a chunked body (no extensions or trailers in these tests).
    fn dechunk(mut raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
            raw = &raw[eol + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&raw[..size]);
            raw = &raw[size + 2..];
        }
    }

    /// Sends `request` on `conn` and reads one response; returns its body.
    async fn exchange(conn: &mut BufReader<TcpStream>, request: &[u8]) -> String {
        conn.get_mut().write_all(request).await.unwrap();
        let head = read_head(conn).await.unwrap().unwrap();
        let text = String::from_utf8(head).unwrap();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body).await.unwrap();
        String::from_utf8(body).unwrap()
    }

    fn put(target: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "PUT {target} HTTP/1.1\r\nhost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[tokio::test]
    async fn corrupts_only_armed_matching_requests_on_a_keep_alive_connection() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(&format!("http://{upstream}"))
            .await
            .unwrap();
        let mut conn = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
        let body = [0x10u8, 0x11, 0x12, 0x13, 0x14, 0x15];

        // Unarmed: unchanged.
        let echoed = exchange(&mut conn, &put("/b/blobs/k", &body)).await;
        assert_eq!(echoed, format!("PUT /b/blobs/k {}", hex(&body)));

        proxy.arm(Rule::put("/blobs/", 4), 1);
        // Not matching (path, method, size): unchanged, and the rule is not used up.
        let get = b"GET /b/blobs/k HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        for (request, expected) in [
            (put("/b/objects/k", &body), "PUT /b/objects/k 101112131415"),
            (
                put("/b/blobs/small", &body[..4]),
                "PUT /b/blobs/small 10111213",
            ),
            (get, "GET /b/blobs/k "),
        ] {
            assert_eq!(exchange(&mut conn, &request).await, expected);
        }
        assert!(proxy.corrupted().is_empty());

        // Matching: the middle byte (offset 3) is flipped, once.
        let echoed = exchange(&mut conn, &put("/b/blobs/k?partNumber=1", &body)).await;
        assert_eq!(echoed, "PUT /b/blobs/k?partNumber=1 101112ec1415");
        let echoed = exchange(&mut conn, &put("/b/blobs/k", &body)).await;
        assert_eq!(echoed, format!("PUT /b/blobs/k {}", hex(&body)));
        assert_eq!(
            proxy.corrupted(),
            vec![Corrupted {
                method: "PUT".into(),
                target: "/b/blobs/k?partNumber=1".into(),
                offset: 3
            }]
        );
        assert_eq!(proxy.requests(), 6);
        assert_eq!(proxy.disarm(), 0);
    }

    #[tokio::test]
    async fn corrupts_chunked_bodies_and_keeps_the_framing() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(&upstream.to_string()).await.unwrap();
        let mut conn = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
        let chunked = |target: &str| {
            format!(
                "PUT {target} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\
                 x-amz-decoded-content-length: 6\r\n\r\n\
                 4\r\n\x01\x02\x03\x04\r\n2\r\n\x05\x06\r\n0\r\n\r\n"
            )
            .into_bytes()
        };
        proxy.arm(Rule::put("/blobs/", 5), 2);
        assert_eq!(
            exchange(&mut conn, &chunked("/blobs/a")).await,
            "PUT /blobs/a 0102fc040506"
        );
        // The connection still frames requests right after a corrupted chunked body.
        assert_eq!(
            exchange(&mut conn, &put("/blobs/b", &[9; 8])).await,
            "PUT /blobs/b 09090909f6090909"
        );
        assert_eq!(
            exchange(&mut conn, &chunked("/blobs/c")).await,
            "PUT /blobs/c 010203040506"
        );
        assert_eq!(proxy.corrupted().len(), 2);
    }
}
