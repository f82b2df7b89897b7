//! The CUDA C sources of our own kernels (`ptx/*.cu`), embedded in the binary and
//! compiled to PTX by NVRTC at run time for the device's architecture.

/// (file name, source) of every kernel file in `ptx/`.
pub const SOURCES: [(&str, &str); 11] = [
    ("augment.cu", include_str!("../../ptx/augment.cu")),
    ("batch_norm_relu.cu", include_str!("../../ptx/batch_norm_relu.cu")),
    ("bf16.cu", include_str!("../../ptx/bf16.cu")),
    ("conv_c3.cu", include_str!("../../ptx/conv_c3.cu")),
    ("cross_entropy.cu", include_str!("../../ptx/cross_entropy.cu")),
    ("elementwise.cu", include_str!("../../ptx/elementwise.cu")),
    ("graph_step.cu", include_str!("../../ptx/graph_step.cu")),
    ("layout.cu", include_str!("../../ptx/layout.cu")),
    ("max_pool.cu", include_str!("../../ptx/max_pool.cu")),
    ("reduce.cu", include_str!("../../ptx/reduce.cu")),
    ("sgd.cu", include_str!("../../ptx/sgd.cu")),
];

/// The value of `#define NAME value` in kernel file `file` (tests tie the host's launch
/// constants to the kernels' with it: a kernel that indexes shared memory by its thread
/// index trusts the host's block size).
#[cfg(test)]
pub(crate) fn define(file: &str, name: &str) -> u64 {
    let (_, src) = SOURCES.iter().find(|(f, _)| *f == file).unwrap_or_else(|| panic!("no kernel file {file}"));
    let prefix = format!("#define {name} ");
    let line = src.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{file} defines no {name}"));
    line[prefix.len()..].split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{file}: {line}"))
}

#[cfg(test)]
mod tests {
    /// `define` reads a kernel file's constants (and says which one is missing).
    #[test]
    fn defines_are_read_from_the_kernel_files() {
        assert_eq!(super::define("bf16.cu", "WCOPY_MAX_TENSORS"), 16);
        assert!(std::panic::catch_unwind(|| super::define("bf16.cu", "NO_SUCH_CONSTANT")).is_err());
    }

    /// Every `.cu` file in `ptx/` is embedded (a new kernel file must be added to `SOURCES`).
    #[test]
    fn every_kernel_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ptx");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cu"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = super::SOURCES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, embedded);
    }
}
