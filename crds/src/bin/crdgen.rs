//! Writes the CustomResourceDefinitions into the Helm chart.
//!
//! `crdgen` writes `charts/portcullis/crds/<name>.yaml` for each kind (or into the directory
//! given as the first argument); `crdgen --check` only compares and exits 1 on drift.

use std::{fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/portcullis/crds"
    ));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!(
                    "usage: crdgen [--check] [DIR]\nwrites (or checks) the CRD YAML in DIR (default charts/portcullis/crds)"
                );
                return ExitCode::SUCCESS;
            }
            _ => dir = PathBuf::from(arg),
        }
    }
    let mut drifted = false;
    for crd in portcullis_crds::crds() {
        let path = dir.join(portcullis_crds::crd_file_name(&crd));
        let wanted = portcullis_crds::crd_yaml(&crd);
        let current = fs::read_to_string(&path).unwrap_or_default();
        if current == wanted {
            continue;
        }
        if check {
            eprintln!("{} differs from what the types generate", path.display());
            drifted = true;
        } else if let Err(error) = fs::create_dir_all(&dir).and_then(|()| fs::write(&path, wanted))
        {
            eprintln!("cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if drifted {
        eprintln!("run `cargo run -p portcullis-crds --bin crdgen` and commit the result");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
