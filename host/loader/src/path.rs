//! `spec.source.path`: a component read from a file, confined to one folder.
//!
//! In file mode that folder is the config folder (or `--filter-dir`); in Kubernetes mode
//! path sources are refused unless the operator names a folder with `--filter-dir`,
//! since a WasmFilter's author is not the operator of the host. Only regular files are
//! read (not a FIFO, a device or `/proc`), up to the component size limit, and an error
//! names the field and the path but never echoes what the file holds.

use std::io::Read;
use std::path::{Component, Path};

use sluice_translate::Reason;

/// Components larger than this are refused: the registry client's limit, which
/// downloads share.
pub use sluice_oci::MAX_COMPONENT;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "spec.source.path: path sources are off in Kubernetes mode; use source.oci or source.url, or start sluice with --filter-dir DIR to read paths under DIR"
    )]
    Disabled,
    #[error(
        "spec.source.path: {path:?} must be relative to {root} and stay inside it (no leading /, no .., no link out of it)"
    )]
    Escapes { path: String, root: String },
    #[error("spec.source.path: cannot read {path}: {why}")]
    Unreadable { path: String, why: String },
    #[error("spec.source.path: {path} is not a regular file")]
    NotAFile { path: String },
    #[error(
        "spec.source.path: {path} is larger than {MAX_COMPONENT} bytes, the largest component Sluice loads"
    )]
    TooLarge { path: String },
}

impl PathError {
    /// The WasmFilter `Ready=False` reason.
    pub fn reason(&self) -> Reason {
        match self {
            PathError::Unreadable { .. } => Reason::SourceNotFound,
            PathError::TooLarge { .. } => Reason::InvalidComponent,
            _ => Reason::UnsupportedSource,
        }
    }
}

/// Reads `path` under `root` (`None`: path sources are off).
pub fn read(root: Option<&Path>, path: &str) -> Result<Vec<u8>, PathError> {
    let root = root.ok_or(PathError::Disabled)?;
    let escapes = || PathError::Escapes {
        path: path.to_string(),
        root: root.display().to_string(),
    };
    let rel = Path::new(path);
    if rel.as_os_str().is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(escapes());
    }
    let full = root.join(rel);
    let unreadable = |e: std::io::Error| PathError::Unreadable {
        path: full.display().to_string(),
        why: e.to_string(),
    };
    // A link inside the folder may not lead out of it.
    let real = full.canonicalize().map_err(unreadable)?;
    let real_root = root.canonicalize().map_err(unreadable)?;
    if !real.starts_with(&real_root) {
        return Err(escapes());
    }
    let shown = || full.display().to_string();
    let meta = std::fs::metadata(&real).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(PathError::NotAFile { path: shown() });
    }
    if meta.len() > MAX_COMPONENT {
        return Err(PathError::TooLarge { path: shown() });
    }
    let file = std::fs::File::open(&real).map_err(unreadable)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_COMPONENT + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_COMPONENT {
        return Err(PathError::TooLarge { path: shown() });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-path-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("config")).expect("mkdir");
        std::fs::write(d.join("config/f.wasm"), b"\0asm").expect("write");
        std::fs::write(d.join("secret"), b"root:x:0:0").expect("write");
        d
    }

    #[test]
    fn paths_stay_inside_their_folder() {
        let d = folder("escape");
        let root = d.join("config");
        assert_eq!(read(Some(&root), "f.wasm").expect("inside"), b"\0asm");
        assert_eq!(read(Some(&root), "./f.wasm").expect("inside"), b"\0asm");
        std::os::unix::fs::symlink(d.join("secret"), root.join("link.wasm")).expect("symlink");
        for bad in [
            "../secret",
            "/etc/passwd",
            "sub/../../secret",
            "link.wasm",
            "",
        ] {
            let e = read(Some(&root), bad).expect_err(bad);
            assert!(matches!(e, PathError::Escapes { .. }), "{bad}: {e}");
            assert!(!e.to_string().contains("root:x"), "no content in {e}");
        }
    }

    #[test]
    fn only_regular_files_up_to_the_size_limit_are_read() {
        let d = folder("kinds");
        let root = d.join("config");
        let fifo = root.join("fifo.wasm");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        // Refused without opening it (opening a FIFO would block the loader).
        assert!(matches!(
            read(Some(&root), "fifo.wasm"),
            Err(PathError::NotAFile { .. })
        ));
        std::fs::create_dir(root.join("dir.wasm")).expect("mkdir");
        assert!(matches!(
            read(Some(&root), "dir.wasm"),
            Err(PathError::NotAFile { .. })
        ));
        let big = std::fs::File::create(root.join("big.wasm")).expect("create");
        big.set_len(MAX_COMPONENT + 1).expect("sparse file");
        let e = read(Some(&root), "big.wasm").expect_err("too large");
        assert!(matches!(e, PathError::TooLarge { .. }), "{e}");
        assert_eq!(e.reason(), Reason::InvalidComponent);
        let e = read(Some(&root), "missing.wasm").expect_err("missing");
        assert_eq!(e.reason(), Reason::SourceNotFound);
    }

    #[test]
    fn without_a_folder_path_sources_are_off() {
        let e = read(None, "f.wasm").expect_err("off");
        assert!(e.to_string().contains("--filter-dir"), "{e}");
        assert_eq!(e.reason(), Reason::UnsupportedSource);
    }
}
