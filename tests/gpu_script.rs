//! `scripts/gpu/on-gpu.sh`'s decisions, run here with stand-ins for the GPU machine's programs.
//!
//! A GPU session has a few minutes of device time and no person between its steps, so the
//! script decides alone: a recipe run of our fast GPU path that fails is kept under another
//! name and the seed runs again with `--plain`; runs that fail for other reasons (refused
//! before they opened the GPU, cut by the call's budget, flags that change the recipe) switch
//! nothing; `official` pairs a run on the official files with one on their JPEG re-encoding
//! under the same flags; `pick` sends the later runs to the convolution choices (first
//! convolution, graph API, timed search) with the fastest profiled step, only if measured
//! faster and tested. A mistake there costs a whole session's measurements, and nothing
//! else exercises this logic before the GPU does, so each decision is checked here.
//!
//! Every test runs the real script in a folder of its own (`GPU_ROOT`, in place of `/root`),
//! with a stand-in `model` (a bash script that logs its arguments and prints a run's lines:
//! `Device:`, an `EPOCH:` line, `Done: test accuracy P%`), and stand-ins for `nvidia-smi`
//! and for the two Python scripts `official` calls (each has its own `--selftest`). What the
//! stand-in model does is set per test by patterns over its arguments: FAIL_WHEN (ends at
//! 10%), CRASH_WHEN (exits 1 after `Device:`), HANG_WHEN (sleeps past its limit); none of
//! them applies to a `--plain` run (the reference path is taken to work).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The stand-in for `model`: `model train --out DIR --name NAME ... [--data D] ...`.
const FAKE_MODEL: &str = r#"#!/usr/bin/env bash
[ "$1" = --help ] && exit 0
args=(); out=""; name=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift ;;
    --data) args+=(--data "$(basename "$2")"); shift ;;
    --name) name="$2"; args+=(--name "$2"); shift ;;
    *) args+=("$1") ;;
  esac
  shift
done
all="${args[*]}"
echo "$all" >> "$GPU_ROOT/calls.txt"
# The reference path works: the patterns below are for the fast path's runs.
[[ " $all " == *" --plain "* ]] && unset HANG_WHEN CRASH_WHEN FAIL_WHEN
dir="$out/$name"
[ -f "$dir/model.safetensors" ] && { echo "Error: $dir already holds a run" >&2; exit 1; }
mkdir -p "$dir"
echo "Device: stand-in"
echo "ResNet-9 width 1 (6573130 parameters), batch 512, 24 epochs, 50000 training images, seed 0"
echo "LR range test suggests LRMAX=4.0e-1 LRMIN=4.0e-3 (stand-in)"
echo "EPOCH: 1 (LR: 0.1)"
# (exec: the time limit's signal reaches the sleep itself, which holds the output pipe open)
if [ -n "${HANG_WHEN:-}" ] && [[ "$all" =~ $HANG_WHEN ]]; then exec sleep 30; fi
touch "$dir/model.safetensors"
if [ -n "${CRASH_WHEN:-}" ] && [[ "$all" =~ $CRASH_WHEN ]]; then echo "Error: the loss is NaN" >&2; exit 1; fi
if [ -n "${FAIL_WHEN:-}" ] && [[ "$all" =~ $FAIL_WHEN ]]; then echo "Done: test accuracy 10.00% after 24 epochs"; exit 0; fi
echo "Done: test accuracy 91.50% after 24 epochs"
"#;

/// `nvidia-smi -L` and the driver query `header` makes.
const FAKE_NVIDIA_SMI: &str = r#"#!/usr/bin/env bash
case "$*" in *driver*) echo 580.00 ;; *) echo "GPU 0: stand-in H100" ;; esac
"#;

/// `python3`: official_cifar.py accepts its candidates (or, with OFFICIAL_NONE, none) and
/// writes six empty files; jpeg_degrade.py makes its output folder; `-c` (the Pillow check)
/// succeeds; scripts/gpu/summarize.py runs for real (REAL_PYTHON3: the python3 on the test's
/// own PATH).
const FAKE_PYTHON: &str = r#"#!/usr/bin/env bash
case "$1" in
  bench/official_cifar.py)
    [ -n "${OFFICIAL_NONE:-}" ] && { echo "no official CIFAR-10 among 1 candidate(s)"; exit 3; }
    out="${@: -1}"; mkdir -p "$out"; touch "$out"/data_batch_{1..5}.bin "$out"/test_batch.bin
    echo "official CIFAR-10 from the stand-in"; exit 0 ;;
  bench/jpeg_degrade.py)
    while [ $# -gt 0 ]; do [ "$1" = --out ] && mkdir -p "$2"; shift; done; exit 0 ;;
  -c) exit 0 ;;
  scripts/gpu/summarize.py) exec "$REAL_PYTHON3" "$@" ;;
  *) echo "stand-in python3: $*" >&2; exit 1 ;;
esac
"#;

/// A GPU test binary's output that `tests` reads as a failure of every test.
const FAKE_TEST_BINARY: &str = "#!/usr/bin/env bash\necho 'test result: FAILED. 0 passed; 1 failed'\nexit 101\n";

struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
    out: PathBuf,
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

impl Machine {
    /// A staged machine: six (empty) data files, the stand-in binaries, the library path
    /// `env.sh` would search for already found.
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let bin = dir.path().join("bin");
        let out = dir.path().join("out");
        for d in [root.join("devbin"), root.join("cifar10"), root.join("results"), bin.clone(), out.clone()] {
            fs::create_dir_all(d).unwrap();
        }
        for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"] {
            fs::write(root.join("cifar10").join(format!("{f}.bin")), b"").unwrap();
        }
        fs::write(root.join("devbin/ld-library-path"), "/nonexistent\n").unwrap();
        write_executable(&root.join("devbin/model"), FAKE_MODEL);
        for t in ["test-cuda", "test-cuda_ops", "test-cuda_gradcheck", "test-cuda_train"] {
            write_executable(&root.join("devbin").join(t), FAKE_TEST_BINARY);
        }
        write_executable(&bin.join("nvidia-smi"), FAKE_NVIDIA_SMI);
        write_executable(&bin.join("python3"), FAKE_PYTHON);
        Machine { _dir: dir, root, bin, out }
    }

    fn results(&self) -> PathBuf {
        self.root.join("results")
    }

    /// `bash scripts/gpu/on-gpu.sh ARGS` with the stand-ins first on PATH and ENV set; panics
    /// with the script's output if it exits non-zero.
    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut cmd = Command::new("bash");
        cmd.arg(repo.join("scripts/gpu/on-gpu.sh")).args(args).current_dir(repo);
        cmd.env("PATH", path).env("GPU_ROOT", &self.root).env("OUT", &self.out).env("REAL_PYTHON3", real_python3());
        for v in ["BUDGET_S", "TRAIN_ARGS", "TRAIN_TIMEOUT", "MIN_RERUN_S", "ACC_FLOOR", "TEST_TIMEOUT"] {
            cmd.env_remove(v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("bash runs");
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "on-gpu.sh {args:?} exited {:?}:\n{text}", o.status);
        text
    }

    /// The stand-in model's calls, one line each: its arguments, `--out` left out and
    /// `--data` cut to the folder's name.
    fn calls(&self) -> Vec<String> {
        match fs::read_to_string(self.root.join("calls.txt")) {
            Ok(t) => t.lines().map(str::to_string).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The files in results/ named `train-24ep-<date>-NAME_AND_EXT` (the date is YYYY-MM-DD, so
    /// `seed0.log` does not match `...-seed0-fast-path-failed.log` nor the other way round).
    fn logs(&self, name_and_ext: &str) -> Vec<String> {
        let suffix = format!("-{name_and_ext}");
        let len = "train-24ep-".len() + "YYYY-MM-DD".len() + suffix.len();
        self.listing().into_iter().filter(|n| n.starts_with("train-24ep-") && n.ends_with(&suffix) && n.len() == len).collect()
    }

    /// The text of the one file in results/ named `train-24ep-<date>-NAME_AND_EXT`.
    fn log(&self, name_and_ext: &str) -> String {
        let found = self.logs(name_and_ext);
        assert_eq!(found.len(), 1, "no single train-24ep-<date>-{name_and_ext} in {:?}", self.listing());
        fs::read_to_string(self.results().join(&found[0])).unwrap()
    }

    fn has_log(&self, name_and_ext: &str) -> bool {
        !self.logs(name_and_ext).is_empty()
    }

    fn has_fallback_note(&self) -> bool {
        self.listing().iter().any(|n| n.starts_with("fallback-"))
    }

    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.results()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        v.sort();
        v
    }
}

/// The python3 on this process's PATH (the stand-ins are first on the script's), for the
/// summary the script prints at its end.
fn real_python3() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("python3")).find(|p| p.is_file()).expect("python3 on PATH (the summary script needs it)")
}

/// A command with a step beyond `stage` ends with scripts/gpu/summarize.py's page over the
/// results (the real script, on the stand-in model's logs), printed last and kept in
/// summary-<date>.md: here the three recipe runs of the staged copy, and issue 6's bar not met
/// at 91.50%.
#[test]
fn a_command_ends_with_the_summary_of_its_results() {
    let m = Machine::new();
    let text = m.run(&[], &["train", "0", "1", "2"]);
    let at = text.rfind("== summary-").unwrap_or_else(|| panic!("no summary in:\n{text}"));
    let page = &text[at..];
    assert!(page.contains("| train-24ep-") && page.contains("seed2.log | staged copy | yes |"), "{page}");
    assert!(page.contains("3 recipe runs, mean 91.50%, lowest 91.50%: not met"), "{page}");
    let kept: Vec<String> = m.listing().into_iter().filter(|n| n.starts_with("summary-") && n.ends_with(".md")).collect();
    assert_eq!(kept.len(), 1, "{:?}", m.listing());
    assert!(fs::read_to_string(m.results().join(&kept[0])).unwrap().contains("not met"));
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_failed_fast_path_run_is_kept_apart_and_the_seed_runs_again_with_plain() {
    let m = Machine::new();
    m.run(&[("FAIL_WHEN", "seed 0")], &["train", "0", "1"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed0 --no-progress --data cifar10 --seed 0",
            "train --name seed0 --no-progress --data cifar10 --seed 0 --plain",
            "train --name seed1 --no-progress --data cifar10 --seed 1 --plain",
        ])
    );
    assert!(m.log("seed0-fast-path-failed.log").contains("test accuracy 10.00%"));
    assert!(m.log("seed0.log").contains("test accuracy 91.50%"));
    assert!(m.root.join("results/runs/seed0-fast-path-failed/model.safetensors").exists());
    assert_eq!(m.log("seed0.flags").trim(), "--plain");
    assert!(m.has_fallback_note());
}

#[test]
fn a_crash_after_the_gpu_opened_and_a_hang_through_the_whole_limit_both_fall_back() {
    let m = Machine::new();
    m.run(&[("CRASH_WHEN", "seed 1 *$")], &["train", "0", "1", "2"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed0 --no-progress --data cifar10 --seed 0",
            "train --name seed1 --no-progress --data cifar10 --seed 1",
            "train --name seed1 --no-progress --data cifar10 --seed 1 --plain",
            "train --name seed2 --no-progress --data cifar10 --seed 2 --plain",
        ])
    );
    // A run that hangs until the whole of TRAIN_TIMEOUT has passed.
    let m = Machine::new();
    m.run(&[("HANG_WHEN", "seed 0 *$"), ("TRAIN_TIMEOUT", "2")], &["train", "0"]);
    assert_eq!(m.calls().len(), 2, "{:?}", m.calls());
    assert!(m.calls()[1].ends_with("--seed 0 --plain"));
    assert!(!m.log("seed0-fast-path-failed.log").contains("Done:"));
    assert!(m.log("seed0.log").contains("91.50%"));
}

#[test]
fn runs_refused_before_the_gpu_opened_or_off_the_recipe_switch_nothing() {
    // The run folder is already there: the model refuses before its `Device:` line.
    let m = Machine::new();
    fs::create_dir_all(m.root.join("results/runs/seed0")).unwrap();
    fs::write(m.root.join("results/runs/seed0/model.safetensors"), b"").unwrap();
    m.run(&[("FAIL_WHEN", "seed 0")], &["train", "0", "1"]);
    assert_eq!(m.calls().len(), 2, "{:?}", m.calls());
    assert!(m.calls().iter().all(|c| !c.contains("--plain")), "{:?}", m.calls());
    assert!(!m.has_fallback_note());
    assert!(!m.has_log("seed0-fast-path-failed.log"));

    // A flag that changes the recipe, in TRAIN_ARGS or the step's own: a low accuracy may be right.
    let m = Machine::new();
    m.run(&[("FAIL_WHEN", "seed 0"), ("TRAIN_ARGS", "--lr-max 9")], &["train", "0", "1"]);
    m.run(&[("FAIL_WHEN", "seed 2")], &["train", "2", "--", "--epochs", "3"]);
    assert!(m.calls().iter().all(|c| !c.contains("--plain")), "{:?}", m.calls());
    assert!(!m.has_fallback_note());
    assert!(m.log("seed2-epochs-3.log").contains("10.00%"));

    // --tta and --ema leave the training as it is: still judged.
    let m = Machine::new();
    m.run(&[("FAIL_WHEN", "seed 0"), ("TRAIN_ARGS", "--tta")], &["train", "0"]);
    assert_eq!(m.calls()[1], "train --name seed0 --no-progress --data cifar10 --seed 0 --tta --plain");
    let m = Machine::new();
    m.run(&[("FAIL_WHEN", "seed 0"), ("TRAIN_ARGS", "--ema --tta")], &["train", "0"]);
    assert_eq!(m.calls()[1], "train --name seed0 --no-progress --data cifar10 --seed 0 --ema --tta --plain");
}

#[test]
fn a_failed_run_without_time_for_a_rerun_still_leaves_the_usual_name() {
    // BUDGET_S 100: 85 s left after the 15 s margin, under the 90 s a rerun needs.
    let m = Machine::new();
    let text = m.run(&[("FAIL_WHEN", "seed 0"), ("BUDGET_S", "100")], &["train", "0"]);
    assert_eq!(m.calls().len(), 1, "{:?}", m.calls());
    assert!(m.log("seed0-fast-path-failed.log").contains("10.00%"));
    assert!(!m.has_log("seed0.log"), "{:?}", m.listing());
    assert!(text.contains("under the 90 s a rerun"), "{text}");
}

/// Failed GPU tests (the stand-in binaries fail them all) add no flag to the later runs: the
/// fast path's runs are judged by their own ends (`--plain` after a failed run), and the
/// first convolution's direct kernels are not on by default, so their test's failure leaves
/// the runs as they are.
#[test]
fn failed_gpu_tests_add_no_flag_to_the_later_runs() {
    let m = Machine::new();
    m.run(&[("TEST_TIMEOUT", "20")], &["tests", "tests", "train", "0"]);
    assert_eq!(m.calls(), strings(&["train --name seed0 --no-progress --data cifar10 --seed 0"]));
}

/// A failed GPU test of the moving average's kernel drops `--ema` from the later runs (and only
/// that flag); without `--ema` in TRAIN_ARGS there is nothing to drop; when that test passes,
/// whatever else failed, `--ema` stays.
#[test]
fn a_failed_moving_average_test_drops_ema_from_the_later_runs() {
    let m = Machine::new();
    let text = m.run(&[("TEST_TIMEOUT", "20"), ("TRAIN_ARGS", "--tta --ema")], &["tests", "train", "0"]);
    assert_eq!(m.calls(), strings(&["train --name seed0 --no-progress --data cifar10 --seed 0 --tta"]));
    assert!(text.contains("every later train runs without --ema (TRAIN_ARGS now: --tta)"), "{text}");
    let m = Machine::new();
    let text = m.run(&[("TEST_TIMEOUT", "20"), ("TRAIN_ARGS", "--tta")], &["tests", "train", "0"]);
    assert!(!text.contains("--ema"), "{text}");
    // The test passed (the other tests of its binary failed): --ema stays.
    let m = Machine::new();
    let passed = "#!/usr/bin/env bash\necho 'test ema_update_matches_the_cpu_exactly ... ok'\necho 'test sgd_update_matches_the_cpu_exactly ... FAILED'\necho 'failures:'\necho '    sgd_update_matches_the_cpu_exactly'\necho 'test result: FAILED. 1 passed; 1 failed'\nexit 101\n";
    write_executable(&m.root.join("devbin/test-cuda_ops"), passed);
    let text = m.run(&[("TEST_TIMEOUT", "20"), ("TRAIN_ARGS", "--tta --ema")], &["tests", "train", "0"]);
    assert_eq!(m.calls(), strings(&["train --name seed0 --no-progress --data cifar10 --seed 0 --tta --ema"]));
    assert!(!text.contains("without --ema"), "{text}");
}

#[test]
fn official_pairs_the_jpeg_run_with_the_flags_of_the_first_seed() {
    let search = |m: &Machine| {
        fs::write(m.results().join(format!("cifar-search-{}.txt", today())), "== candidates\n/somewhere\n").unwrap();
    };
    // A fallback at the second seed does not reach the q75 run, which pairs with seed 21's.
    let m = Machine::new();
    search(&m);
    m.run(&[("FAIL_WHEN", "seed 22")], &["official", "21", "22"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed21-official --no-progress --data cifar10-official --seed 21",
            "train --name seed22-official --no-progress --data cifar10-official --seed 22",
            "train --name seed22-official --no-progress --data cifar10-official --seed 22 --plain",
            "train --name seed21-official-q75 --no-progress --data cifar10-official-q75 --seed 21",
        ])
    );
    // The q75 run's own fallback: seed 21 once more on the official files with its flags, and
    // the steps after it on --plain.
    let m = Machine::new();
    search(&m);
    m.run(&[("FAIL_WHEN", "q75")], &["official", "21", "train", "5"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed21-official --no-progress --data cifar10-official --seed 21",
            "train --name seed21-official-q75 --no-progress --data cifar10-official-q75 --seed 21",
            "train --name seed21-official-q75 --no-progress --data cifar10-official-q75 --seed 21 --plain",
            "train --name seed21-official-plain --no-progress --data cifar10-official --seed 21 --plain",
            "train --name seed5-official --no-progress --data cifar10-official --seed 5 --plain",
        ])
    );
    assert!(m.log("seed21-official-q75-fast-path-failed.log").contains("10.00%"));
    // No official copy: the seeds on the staged copy, and no q75 run.
    let m = Machine::new();
    search(&m);
    m.run(&[("OFFICIAL_NONE", "1")], &["official", "21"]);
    assert_eq!(m.calls(), strings(&["train --name seed21 --no-progress --data cifar10 --seed 21"]));
}

#[test]
fn a_seed_already_run_on_the_machine_is_not_run_again_and_its_flags_stand_for_it() {
    let m = Machine::new();
    fs::write(m.results().join(format!("cifar-search-{}.txt", today())), "/somewhere\n").unwrap();
    let earlier = m.results().join(format!("train-24ep-{}-seed21-official.log", today()));
    fs::write(&earlier, "an earlier call's run\n").unwrap();
    fs::write(earlier.with_extension("flags"), "--plain\n").unwrap();
    m.run(&[], &["official", "21", "22"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed22-official --no-progress --data cifar10-official --seed 22",
            "train --name seed21-official-q75 --no-progress --data cifar10-official-q75 --seed 21 --plain",
        ])
    );
    assert_eq!(fs::read_to_string(&earlier).unwrap(), "an earlier call's run\n");
}

#[test]
fn stage_picks_the_official_candidates_out_of_the_paths_named_cifar() {
    // What `stage`'s find may print on a machine with caches of torchvision and Hugging Face.
    let m = Machine::new();
    let names = m.root.join("names.txt");
    let hub = "/root/.cache/huggingface/hub/datasets--uoft-cs--cifar10/snapshots/abc/plain_text";
    let listed = [
        "/root/.cache/torchvision/cifar-10-batches-py".to_string(),
        "/data/cifar-10-python.tar.gz".into(),
        "/data/cifar-100-python.tar.gz".into(),
        "/data/notes-on-cifar10.txt".into(),
        format!("{hub}/train-00000-of-00001.parquet"),
        format!("{hub}/test-00000-of-00001.parquet"),
        "/mnt/cifar10/train/0000.arrow".into(),
        "/mnt/cifar10/test/0000.arrow".into(),
        "/mnt/cifar10".into(),
        "/srv/x/cifar-10-batches-bin".into(),
        "/data/cifar-10-python.tar.gz".into(),
    ];
    fs::write(&names, listed.join("\n") + "\n").unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("bash")
        .arg("-c")
        .arg(r#"source scripts/gpu/on-gpu.sh && official_candidates "$1""#)
        .arg("bash")
        .arg(&names)
        .current_dir(repo)
        .env("GPU_ROOT", &m.root)
        .env("OUT", &m.out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8(o.stdout).unwrap().lines().collect::<Vec<_>>(),
        vec![
            "/root/.cache/torchvision/cifar-10-batches-py",
            "/data/cifar-10-python.tar.gz",
            hub,
            "/mnt/cifar10",
            "/srv/x/cifar-10-batches-bin",
        ]
    );
}

/// The script's date, for the file names it reads (`date -u +%Y-%m-%d`).
fn today() -> String {
    let o = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A `profile` step's section of profile-<date>.txt, as the script writes it: the header, the
/// `== model profile FLAGS` line, and the model's captured-step line (`ms` per step).
fn profile_section(flags: &str, ms: &str) -> String {
    format!(
        "GPU 0: stand-in H100\ndriver version: 580.00\n== model profile {flags}\nOne training step, time per operation (GPU time between CUDA events):\n\
         10 captured steps (CUDA graph) queued back to back: {ms} ms per step; the graph reserves 841 MiB\n"
    )
}

/// This day's cuda-tests file with the first convolution's GPU test passed, or failed.
fn first_conv_test(passed: bool) -> String {
    gpu_tests(&[("first_conv_direct_kernels_match_the_cpu_and_cudnn", passed)])
}

/// This day's cuda-tests file with these tests passed or failed, as libtest prints them.
fn gpu_tests(tests: &[(&str, bool)]) -> String {
    let mut text = String::from("== test-cuda_ops --ignored --test-threads=1 --nocapture\n");
    for (name, passed) in tests {
        text += &format!("test {name} ... {}\n", if *passed { "ok" } else { "FAILED" });
    }
    let failed: Vec<&str> = tests.iter().filter(|(_, p)| !p).map(|(n, _)| *n).collect();
    if !failed.is_empty() {
        text += "\nfailures:\n";
        for name in &failed {
            text += &format!("    {name}\n");
        }
    }
    text += &format!("\ntest result: {}. {} passed; {} failed\n", if failed.is_empty() { "ok" } else { "FAILED" }, tests.len() - failed.len(), failed.len());
    text
}

/// `pick` takes, of this day's profiles with no flag or one --first-conv choice, the fastest
/// captured step, and its flag goes to every later train and sbs, unless a step names
/// --first-conv itself; a profile with other flags is not a candidate, and the last profile
/// of a choice counts.
#[test]
fn pick_gives_the_fastest_first_convolution_to_the_later_runs() {
    let m = Machine::new();
    let day = today();
    let profiles = [
        profile_section("", "3.12"),
        profile_section("--first-conv=cudnn-graph", "2.60"),
        profile_section("--first-conv=direct", "2.95"),
        // Not a convolution choice: never picked, however fast.
        profile_section("--bnr-max-blocks 0", "2.10"),
        profile_section("--first-conv=direct --no-vector-kernels", "2.20"),
        // A second profile of cudnn-graph: the last one counts.
        profile_section("--first-conv=cudnn-graph", "2.80"),
    ];
    fs::write(m.results().join(format!("profile-{day}.txt")), profiles.concat()).unwrap();
    fs::write(m.results().join(format!("cuda-tests-{day}.txt")), first_conv_test(true)).unwrap();
    let text = m.run(&[], &["pick", "train", "5", "train", "6", "--", "--first-conv=cudnn", "sbs", "7"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed5 --no-progress --data cifar10 --seed 5 --first-conv=cudnn-graph",
            "train --name seed6-first-conv-cudnn --no-progress --data cifar10 --seed 6 --first-conv=cudnn",
        ])
    );
    // (The stand-in python3 refuses side_by_side.py, printing its arguments.)
    assert!(text.contains("--ours-args=--first-conv=cudnn-graph"), "{text}");
    let picked = fs::read_to_string(m.results().join(format!("pick-{day}.txt"))).unwrap();
    assert!(picked.contains("default\t3.12\n--first-conv=cudnn-graph\t2.80\n--first-conv=direct\t2.95\n"), "{picked}");
    assert!(picked.contains("pick: --first-conv=cudnn-graph (2.80 ms, the default 3.12)"), "{picked}");
}

/// `pick` keeps the default when the default is the fastest, when the fastest is within 1% of
/// it, when the first convolution's GPU test did not pass today, and when there is no profile.
#[test]
fn pick_keeps_the_default_unless_a_tested_choice_is_measured_faster() {
    let day = today();
    for (profiles, tested, why) in [
        (vec![profile_section("", "3.00"), profile_section("--first-conv=direct", "3.05")], true, "the default is the fastest"),
        (vec![profile_section("", "3.00"), profile_section("--first-conv=direct", "2.98")], true, "within 1%"),
        (vec![profile_section("", "3.00"), profile_section("--first-conv=direct", "2.50")], false, "has not passed today"),
        // (The flag's other spelling, `--first-conv direct`.)
        (vec![profile_section("", "3.00"), profile_section("--first-conv direct", "2.50")], false, "has not passed today"),
        // No profile of the default (no flag): nothing to compare a change with, even where a
        // flag names what the default is today.
        (vec![profile_section("--first-conv=cudnn", "3.00"), profile_section("--first-conv=direct", "2.50")], true, "the default has no profile"),
        (vec![profile_section("--first-conv=direct", "2.50")], true, "the default has no profile"),
        // A captured step partly run eagerly is no measurement of the choice.
        (
            vec![profile_section("", "3.00"), profile_section("--first-conv=direct", "2.50 ms per step; the graph reserves 1 MiB (3 of them ran eagerly: x); x")],
            true,
            "the default is the fastest",
        ),
        (vec![], true, "nothing to choose from"),
    ] {
        let m = Machine::new();
        if !profiles.is_empty() {
            fs::write(m.results().join(format!("profile-{day}.txt")), profiles.concat()).unwrap();
        }
        fs::write(m.results().join(format!("cuda-tests-{day}.txt")), first_conv_test(tested)).unwrap();
        m.run(&[], &["pick", "train", "5"]);
        assert_eq!(m.calls(), strings(&["train --name seed5 --no-progress --data cifar10 --seed 5"]), "{why}");
        let picked = fs::read_to_string(m.results().join(format!("pick-{day}.txt"))).unwrap();
        assert!(picked.contains(why) && picked.contains("the default stays"), "{why}: {picked}");
    }
}

/// A recipe run that fails with the first convolution `pick` chose runs again without it, and
/// the rest of the call goes without it too, not to --plain; a second failure then falls back
/// to --plain.
#[test]
fn a_failed_run_with_the_picked_first_convolution_drops_the_choice_before_plain() {
    let day = today();
    let staged = |m: &Machine| {
        let profiles = [profile_section("", "3.00"), profile_section("--first-conv=direct", "2.50")];
        fs::write(m.results().join(format!("profile-{day}.txt")), profiles.concat()).unwrap();
        fs::write(m.results().join(format!("cuda-tests-{day}.txt")), first_conv_test(true)).unwrap();
    };
    let m = Machine::new();
    staged(&m);
    m.run(&[("CRASH_WHEN", "first-conv=direct")], &["pick", "train", "5", "6"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed5 --no-progress --data cifar10 --seed 5 --first-conv=direct",
            "train --name seed5 --no-progress --data cifar10 --seed 5",
            "train --name seed6 --no-progress --data cifar10 --seed 6",
        ])
    );
    assert!(m.log("seed5-fast-path-failed.log").contains("Device: stand-in"));
    assert!(m.log("seed5.log").contains("91.50%"));
    // Failing without the choice too: --plain, as for any fast-path failure.
    let m = Machine::new();
    staged(&m);
    m.run(&[("CRASH_WHEN", "seed 5")], &["pick", "train", "5", "6"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed5 --no-progress --data cifar10 --seed 5 --first-conv=direct",
            "train --name seed5 --no-progress --data cifar10 --seed 5",
            "train --name seed5 --no-progress --data cifar10 --seed 5 --plain",
            "train --name seed6 --no-progress --data cifar10 --seed 6 --plain",
        ])
    );
    assert!(m.has_log("seed5-fast-path-failed.log") && m.has_log("seed5-fast-path-failed-2.log"), "{:?}", m.listing());
    assert_eq!(m.log("seed5.flags").trim(), "--plain");
}

/// `pick` also weighs cuDNN's graph API for every convolution with the timed search (in any
/// order and either spelling): its two flags go to the later runs when it is fastest and its
/// GPU test passed; untested, the default stays; a step naming one of these flags keeps its
/// own.
#[test]
fn pick_weighs_the_graph_api_with_the_timed_search_too() {
    let day = today();
    let profiles = [
        profile_section("", "3.12"),
        profile_section("--first-conv=direct", "2.95"),
        profile_section("--cudnn-graph --cudnn-search timed", "2.50"),
        // The same choice spelt otherwise: the last profile of it counts.
        profile_section("--cudnn-search=timed --cudnn-graph", "2.70"),
    ];
    let both = [("first_conv_direct_kernels_match_the_cpu_and_cudnn", true), ("graph_api_convolutions_match_the_cpu", true)];
    let m = Machine::new();
    fs::write(m.results().join(format!("profile-{day}.txt")), profiles.concat()).unwrap();
    fs::write(m.results().join(format!("cuda-tests-{day}.txt")), gpu_tests(&both)).unwrap();
    m.run(&[], &["pick", "train", "5", "train", "6", "--", "--cudnn-search=find"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed5 --no-progress --data cifar10 --seed 5 --cudnn-graph --cudnn-search=timed",
            "train --name seed6-cudnn-search-find --no-progress --data cifar10 --seed 6 --cudnn-search=find",
        ])
    );
    let picked = fs::read_to_string(m.results().join(format!("pick-{day}.txt"))).unwrap();
    assert!(picked.contains("--cudnn-graph --cudnn-search=timed\t2.70\n"), "{picked}");
    // The graph API's test failed: the default stays, and the reason names the test.
    let m = Machine::new();
    fs::write(m.results().join(format!("profile-{day}.txt")), profiles.concat()).unwrap();
    let failed = [("first_conv_direct_kernels_match_the_cpu_and_cudnn", true), ("graph_api_convolutions_match_the_cpu", false)];
    fs::write(m.results().join(format!("cuda-tests-{day}.txt")), gpu_tests(&failed)).unwrap();
    m.run(&[], &["pick", "train", "5"]);
    assert_eq!(m.calls(), strings(&["train --name seed5 --no-progress --data cifar10 --seed 5"]));
    let picked = fs::read_to_string(m.results().join(format!("pick-{day}.txt"))).unwrap();
    assert!(picked.contains("graph_api_convolutions_match_the_cpu has not passed today"), "{picked}");
}

/// A GPU test whose binary crashed (or hung) after starting it has not passed, even when the
/// day's file holds another binary's `test result:` line after it.
#[test]
fn a_test_whose_binary_crashed_has_not_passed() {
    let day = today();
    let m = Machine::new();
    let profiles = [profile_section("", "3.00"), profile_section("--first-conv=direct", "2.50")];
    fs::write(m.results().join(format!("profile-{day}.txt")), profiles.concat()).unwrap();
    let crashed = "== test-cuda_ops --ignored --test-threads=1 --nocapture\n\
                   test first_conv_direct_kernels_match_the_cpu_and_cudnn ... \n\
                   == test-cuda_ops exit status 139 (124: it ran into its limit of 60 s)\n\
                   == test-cuda_train --ignored --test-threads=1 --nocapture\n\
                   test a_short_run_learns_on_the_gpu ... ok\n\n\
                   test result: ok. 1 passed; 0 failed\n\
                   == test-cuda_train exit status 0 (124: it ran into its limit of 60 s)\n";
    fs::write(m.results().join(format!("cuda-tests-{day}.txt")), crashed).unwrap();
    m.run(&[], &["pick", "train", "5"]);
    assert_eq!(m.calls(), strings(&["train --name seed5 --no-progress --data cifar10 --seed 5"]));
    let picked = fs::read_to_string(m.results().join(format!("pick-{day}.txt"))).unwrap();
    assert!(picked.contains("first_conv_direct_kernels_match_the_cpu_and_cudnn has not passed today"), "{picked}");
}

/// `official`'s JPEG-q75 run gets every flag the script gave the first seed's run on the
/// official files, pick's choice included, even after a later seed's failure dropped that
/// choice for the rest of the call: the pair differs in the data alone.
#[test]
fn the_jpeg_pair_keeps_the_first_runs_picked_convolution() {
    let day = today();
    let m = Machine::new();
    fs::write(m.results().join(format!("cifar-search-{day}.txt")), "/somewhere\n").unwrap();
    let profiles = [profile_section("", "3.00"), profile_section("--first-conv=cudnn", "2.50")];
    fs::write(m.results().join(format!("profile-{day}.txt")), profiles.concat()).unwrap();
    fs::write(m.results().join(format!("cuda-tests-{day}.txt")), first_conv_test(true)).unwrap();
    m.run(&[("CRASH_WHEN", "seed 22 --first-conv")], &["pick", "official", "21", "22", "train", "5"]);
    assert_eq!(
        m.calls(),
        strings(&[
            "train --name seed21-official --no-progress --data cifar10-official --seed 21 --first-conv=cudnn",
            "train --name seed22-official --no-progress --data cifar10-official --seed 22 --first-conv=cudnn",
            "train --name seed22-official --no-progress --data cifar10-official --seed 22",
            "train --name seed21-official-q75 --no-progress --data cifar10-official-q75 --seed 21 --first-conv=cudnn",
            // The choice stays dropped after the pair.
            "train --name seed5-official --no-progress --data cifar10-official --seed 5",
        ])
    );
    assert_eq!(m.log("seed21-official.flags").trim(), "--first-conv=cudnn");
    assert_eq!(m.log("seed21-official-q75.flags").trim(), "--first-conv=cudnn");
}

/// A seed's log that an earlier call left without its .flags (the run was cut by the budget,
/// or crashed and had no time to run again) does not stand for the seed: it is kept apart,
/// with its run folder, and the seed runs again under the usual name.
#[test]
fn an_unfinished_run_of_an_earlier_call_is_kept_apart_and_run_again() {
    let m = Machine::new();
    let earlier = m.results().join(format!("train-24ep-{}-seed23.log", today()));
    fs::write(&earlier, "Device: stand-in\nEPOCH: 1 (LR: 0.1)\n").unwrap();
    fs::create_dir_all(m.root.join("results/runs/seed23")).unwrap();
    fs::write(m.root.join("results/runs/seed23/model.safetensors"), b"").unwrap();
    let text = m.run(&[], &["train", "23"]);
    assert_eq!(m.calls(), strings(&["train --name seed23 --no-progress --data cifar10 --seed 23"]));
    assert!(text.contains("did not end as it should: kept as"), "{text}");
    assert_eq!(m.log("seed23-unfinished.log"), "Device: stand-in\nEPOCH: 1 (LR: 0.1)\n");
    assert!(m.root.join("results/runs/seed23-unfinished/model.safetensors").exists());
    assert!(m.log("seed23.log").contains("91.50%"));
    assert_eq!(m.log("seed23.flags").trim(), "");
}
