//! The data the benchmark moves: incompressible bytes and a realistic compressible corpus, as
//! files on tmpfs so that no tool is slowed by the disk (rclone reads them, S3 PUTs send them,
//! object-store puts stream them).
//!
//! Content is deterministic (a seed per object), so every tool moves exactly the same bytes and
//! a run can be reproduced.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What the objects contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// Random bytes (xorshift): compression gains nothing.
    Random,
    /// Mixed logs, JSON and CSV lines with varying fields, roughly as compressible as real
    /// telemetry (zstd level 3 stores about a fifth to a third of it).
    Corpus,
}

/// Writes `size` bytes of `kind` content for `seed` to `out`, streaming (bounded memory).
pub fn write_content(
    kind: DataKind,
    seed: u64,
    size: u64,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    let mut written = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    while written < size {
        buf.clear();
        match kind {
            DataKind::Random => {
                while buf.len() < 64 * 1024 {
                    buf.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
            DataKind::Corpus => {
                while buf.len() < 64 * 1024 {
                    corpus_line(&mut rng, &mut buf);
                }
            }
        }
        let take = (size - written).min(buf.len() as u64) as usize;
        out.write_all(&buf[..take])?;
        written += take as u64;
    }
    Ok(())
}

/// The content as bytes (for small objects).
pub fn content(kind: DataKind, seed: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    // Writing into a Vec cannot fail.
    let _ = write_content(kind, seed, size, &mut out);
    out
}

/// One line of the corpus: a log line, a JSON event or a CSV row.
fn corpus_line(rng: &mut Rng, buf: &mut Vec<u8>) {
    const LEVELS: [&str; 4] = ["INFO", "WARN", "DEBUG", "ERROR"];
    const SERVICES: [&str; 6] = [
        "ingest",
        "sensor-gw",
        "billing",
        "auth",
        "scheduler",
        "edge-17",
    ];
    const WORDS: [&str; 12] = [
        "request",
        "completed",
        "retrying",
        "connection",
        "timeout",
        "accepted",
        "flushed",
        "batch",
        "checksum",
        "rotated",
        "queue",
        "backpressure",
    ];
    let r = rng.next();
    let ts = 1_790_000_000 + (r % 10_000_000);
    let service = SERVICES[(r >> 8) as usize % SERVICES.len()];
    let _ = match r % 3 {
        0 => writeln!(
            buf,
            "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z {} {} {} {} id={:016x} took={}ms",
            1 + (r >> 12) % 28,
            (r >> 17) % 24,
            (r >> 22) % 60,
            (r >> 28) % 60,
            (r >> 34) % 1000,
            LEVELS[(r >> 44) as usize % 4],
            service,
            WORDS[(r >> 46) as usize % WORDS.len()],
            WORDS[(r >> 50) as usize % WORDS.len()],
            rng.next(),
            (r >> 54) % 5000
        ),
        1 => writeln!(
            buf,
            r#"{{"ts":{ts},"service":"{service}","sensor":"s-{:05}","temp":{:.2},"hum":{:.1},"ok":{}}}"#,
            (r >> 20) % 20_000,
            ((r >> 30) % 6000) as f64 / 100.0 - 10.0,
            ((r >> 40) % 1000) as f64 / 10.0,
            r & 1 == 0
        ),
        _ => writeln!(
            buf,
            "{ts},{service},{},{},{:.3},{}",
            (r >> 16) % 100_000,
            (r >> 33) % 7,
            ((r >> 20) % 100_000) as f64 / 1000.0,
            WORDS[(r >> 52) as usize % WORDS.len()]
        ),
    };
}

/// xorshift64*: fast, deterministic, good enough to defeat compression.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A data set on disk: `count` objects of `size` bytes of `kind`, one file each.
#[derive(Debug, Clone)]
pub struct DataSet {
    /// What the objects contain.
    pub kind: DataKind,
    /// Size of each object in bytes.
    pub size: u64,
    /// The files, one per object, named `o-<n>`.
    pub files: Vec<PathBuf>,
}

impl DataSet {
    /// Writes the data set under `dir` (created), seeds starting at `first_seed`.
    pub fn create(
        dir: &Path,
        kind: DataKind,
        size: u64,
        count: usize,
        first_seed: u64,
    ) -> std::io::Result<DataSet> {
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::with_capacity(count);
        for i in 0..count {
            let path = dir.join(format!("o-{i:06}"));
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
            write_content(kind, first_seed + i as u64, size, &mut file)?;
            file.flush()?;
            files.push(path);
        }
        Ok(DataSet { kind, size, files })
    }

    /// Logical bytes of the whole set.
    pub fn bytes(&self) -> u64 {
        self.size * self.files.len() as u64
    }

    /// The object name of file `i` (what every tool stores it as).
    pub fn name(&self, i: usize) -> String {
        format!("o-{i:06}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_deterministic_sized_and_compresses_as_intended() {
        for kind in [DataKind::Random, DataKind::Corpus] {
            let a = content(kind, 7, 300_001);
            assert_eq!(a.len(), 300_001);
            assert_eq!(a, content(kind, 7, 300_001));
            assert_ne!(a, content(kind, 8, 300_001));
        }
        let random = content(DataKind::Random, 1, 1 << 20);
        let corpus = content(DataKind::Corpus, 1, 1 << 20);
        let ratio = |d: &[u8]| zstd_len(d) as f64 / d.len() as f64;
        assert!(
            ratio(&random) > 0.99,
            "random compresses: {}",
            ratio(&random)
        );
        let r = ratio(&corpus);
        assert!((0.1..0.5).contains(&r), "corpus ratio {r}");
    }

    fn zstd_len(data: &[u8]) -> usize {
        use std::io::Write as _;
        let mut enc = zstd_encoder();
        enc.write_all(data).unwrap_or_default();
        enc.finish().map(|v| v.len()).unwrap_or(0)
    }

    fn zstd_encoder() -> zstd::stream::write::Encoder<'static, Vec<u8>> {
        #[allow(clippy::unwrap_used)]
        zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap()
    }
}
