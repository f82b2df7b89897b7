//! Every CUDA C kernel source in `ptx/` compiles with NVRTC, and each of its
//! `extern "C" __global__` kernels appears as an `.entry` in the PTX.
//!
//! NVRTC needs no GPU, so this runs in CI. It does need `libnvrtc.so.13`: when
//! the library cannot be loaded these tests FAIL (they do not skip) with a
//! message saying how to install it.

use std::path::{Path, PathBuf};

/// The architectures every kernel must compile for: A100 (sm_80) and H100 (sm_90).
const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// Panics with installation instructions unless NVRTC can be loaded.
fn require_nvrtc() {
    if !engine::nvrtc::is_available() {
        panic!(
            "NVRTC (libnvrtc.so.13) cannot be loaded, so the kernels in ptx/ cannot be compiled. \
             Install it with `python3 -m venv /tmp/nvrtc && /tmp/nvrtc/bin/pip install 'nvidia-cuda-nvrtc==13.0.*'` \
             and set LD_LIBRARY_PATH to the folder holding libnvrtc.so.13 \
             (e.g. export LD_LIBRARY_PATH=/tmp/nvrtc/lib/python3.*/site-packages/nvidia/cu13/lib). \
             .ci/run does this."
        );
    }
}

/// The `ptx/` folder at the root of the workspace.
fn ptx_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("ptx")
}

/// Every `*.cu` file in `ptx/`, sorted by name.
fn cu_files() -> Vec<PathBuf> {
    let dir = ptx_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    files
}

/// `source` with `// ...` and `/* ... */` comments replaced by spaces (string
/// literals are not special-cased: kernel sources have none that hold `//`).
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            let end = after.find('\n').unwrap_or(after.len());
            out.push(' ');
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix("/*") {
            let end = after.find("*/").map(|i| i + 2).unwrap_or(after.len());
            out.push(' ');
            rest = &after[end..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The names of the kernels declared `extern "C" __global__` in `source`.
///
/// A simple text scan of the comment-free source: after each `__global__`,
/// skip the return type `void` and an optional `__launch_bounds__(...)`; the
/// next identifier is the kernel's name. Panics on a `__global__` that is not
/// `extern "C"` (its PTX name would be C++-mangled and could not be loaded by
/// name).
fn kernel_names(file: &str, source: &str) -> Vec<String> {
    let code = strip_comments(source);
    let mut names = Vec::new();
    for (at, _) in code.match_indices("__global__") {
        let before = code[..at].trim_end();
        assert!(
            before.ends_with("extern \"C\""),
            "{file}: a __global__ function is not declared extern \"C\" (near: {:?})",
            &code[at..(at + 60).min(code.len())]
        );
        let mut rest = code[at + "__global__".len()..].trim_start();
        loop {
            if let Some(r) = rest.strip_prefix("void") {
                rest = r.trim_start();
            } else if let Some(r) = rest.strip_prefix("__launch_bounds__") {
                let close = r.find(')').unwrap_or_else(|| panic!("{file}: unclosed __launch_bounds__("));
                rest = r[close + 1..].trim_start();
            } else {
                break;
            }
        }
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(!name.is_empty(), "{file}: could not read a kernel name after __global__");
        names.push(name);
    }
    names
}

#[test]
fn kernel_name_scan_reads_declarations_and_ignores_comments() {
    let src = "// extern \"C\" __global__ void commented_out(int x)\n\
               /* extern \"C\" __global__ void also_commented(int x) */\n\
               extern \"C\" __global__ void first(float* x) {}\n\
               extern \"C\"\n__global__ void __launch_bounds__(256, 2) second_k2 (int n) {}\n";
    assert_eq!(kernel_names("t.cu", src), vec!["first".to_string(), "second_k2".to_string()]);
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    require_nvrtc();
    let files = cu_files();
    assert!(!files.is_empty(), "no *.cu files in {}", ptx_dir().display());
    let mut failures = Vec::new();
    let mut total = 0;
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let names = kernel_names(&file, &source);
        assert!(!names.is_empty(), "{file} declares no extern \"C\" __global__ kernel");
        for arch in ARCHS {
            match engine::nvrtc::compile_ptx(&file, &source, arch) {
                Err(e) => failures.push(format!("{file} ({arch}): {e}")),
                Ok(ptx) => {
                    for name in &names {
                        if !ptx.contains(&format!(".entry {name}(")) {
                            failures.push(format!("{file} ({arch}): no `.entry {name}(` in the PTX"));
                        }
                    }
                }
            }
        }
        println!("{file}: {} kernel(s): {}", names.len(), names.join(", "));
        total += names.len();
    }
    assert!(failures.is_empty(), "PTX compilation failures:\n{}", failures.join("\n"));
    println!("{} files, {total} kernels, compiled for {ARCHS:?}", files.len());
}

#[test]
fn syntax_error_returns_the_compile_log() {
    require_nvrtc();
    let src = "extern \"C\" __global__ void broken(float* x)\n{\n    x[0] = ;\n}\n";
    let err = engine::nvrtc::compile_ptx("broken.cu", src, "sm_90").expect_err("a syntax error must not compile");
    let msg = err.to_string();
    assert!(matches!(err, engine::Error::Cuda { op: "nvrtc", .. }), "wrong error variant: {err:?}");
    // The log names the file and the line of the error, and says what is wrong.
    assert!(msg.contains("broken.cu(3)"), "no file/line from the compile log in: {msg}");
    assert!(msg.contains("error"), "no compile log in: {msg}");
}

#[test]
fn bad_architecture_is_an_error() {
    require_nvrtc();
    let src = "extern \"C\" __global__ void k() {}\n";
    let err = engine::nvrtc::compile_ptx("k.cu", src, "sm_1").expect_err("sm_1 is not an architecture");
    assert!(err.to_string().contains("sm_1"), "{err}");
}
