//! AWS Signature Version 4, just enough to re-sign a request the client signed (same scope,
//! date and signed headers; a new payload hash). The canonical request is assembled here from
//! the request as it went over the wire; the key derivation and HMAC are aws-sigv4's.

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use super::RequestHead;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
struct Authorization<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn authorization(head: &RequestHead) -> anyhow::Result<Authorization<'_>> {
    let value = head
        .header("authorization")
        .context("no authorization header")?;
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .context("not an AWS4-HMAC-SHA256 authorization")?;
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("authorization has no {name}"))
    };
    Ok(Authorization {
        credential: field("Credential")?,
        signed_headers: field("SignedHeaders")?,
        signature: field("Signature")?,
    })
}

/// The signature of `head` whose body hashes to `payload_hash`, with the secret key.
fn signature(head: &RequestHead, payload_hash: &str, secret: &str) -> anyhow::Result<String> {
    let auth = authorization(head)?;
    // Credential = <key id>/<date>/<region>/<service>/aws4_request
    let mut scope = auth.credential.splitn(2, '/');
    let (_, scope) = (
        scope.next(),
        scope.next().context("credential without scope")?,
    );
    let parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, "aws4_request"] = parts[..] else {
        anyhow::bail!("unexpected credential scope {scope:?}");
    };
    let amz_date = head.header("x-amz-date").context("no x-amz-date")?;
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.contains('=') {
                p.to_string()
            } else {
                format!("{p}=")
            }
        })
        .collect();
    params.sort();
    let mut canonical_headers = String::new();
    for name in auth.signed_headers.split(';') {
        let value = head
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(",");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical_request = format!(
        "{}\n{path}\n{}\n{canonical_headers}\n{}\n{payload_hash}",
        head.method,
        params.join("&"),
        auth.signed_headers
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    // The signing key depends on the scope's date only (aws-sigv4 formats it from a time).
    let day = date
        .parse::<u32>()
        .ok()
        .and_then(|d| {
            let month = time::Month::try_from(((d / 100) % 100) as u8).ok()?;
            time::Date::from_calendar_date((d / 10_000) as i32, month, (d % 100) as u8).ok()
        })
        .with_context(|| format!("credential scope date {date:?}"))?;
    let at = std::time::SystemTime::from(day.midnight().assume_utc());
    let key = aws_sigv4::sign::v4::generate_signing_key(secret, at, region, service);
    Ok(aws_sigv4::sign::v4::calculate_signature(
        key,
        string_to_sign.as_bytes(),
    ))
}

/// The head of `head` re-signed for `body`: a new `x-amz-content-sha256` and signature.
/// Fails, passing nothing on, unless the proxy reproduces the client's own signature first.
pub(super) fn resign(head: &RequestHead, body: &[u8], secret: &str) -> anyhow::Result<Vec<u8>> {
    let original = head
        .header("x-amz-content-sha256")
        .context("no x-amz-content-sha256")?;
    let auth = authorization(head)?;
    let reproduced = signature(head, original, secret)?;
    anyhow::ensure!(
        reproduced == auth.signature,
        "cannot reproduce the client's signature of {} {}; not re-signing",
        head.method,
        head.target
    );
    let payload_hash = hex(&Sha256::digest(body));
    let mut resigned = head.clone();
    for (name, value) in &mut resigned.headers {
        if name == "x-amz-content-sha256" {
            value.clone_from(&payload_hash);
        }
    }
    let new_signature = signature(&resigned, &payload_hash, secret)?;
    let old_auth = head.header("authorization").unwrap_or_default().to_string();
    let new_auth = old_auth.replace(auth.signature, &new_signature);
    for (name, value) in &mut resigned.headers {
        if name == "authorization" {
            value.clone_from(&new_auth);
        }
    }
    Ok(resigned.to_bytes())
}
