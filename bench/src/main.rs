//! `cim-bench` command line (see `docs/benchmarking.md`).

fn main() {
    eprintln!("cim-bench: scenarios are being added");
    std::process::exit(2);
}
