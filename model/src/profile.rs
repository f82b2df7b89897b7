//! The `profile` command: where one training step's time goes, by operation, by operation
//! and output shape and, on a GPU, by kernel launch (CUDA events), after warm-up steps whose
//! first one is profiled too (where a process's first use of cuDNN and cuBLAS goes); then the
//! time of whole steps (eager, queued back to back and, with `--cuda-graph`, replayed), and
//! the same for evaluation batches and whole test-set evaluations.

use crate::batches::Normalization;
use crate::graph::StepGraph;
use crate::pipeline::Pipeline;
use crate::resnet::ResNet9;
use crate::run::{fresh_network, precompile_kernels, search_rule};
use crate::train::{self, TrainConfig};
use crate::{Error, Result};
use data::Cifar10;
use engine::Device;
use ops::sgd::SgdState;

/// Rows of `profile`'s table by operation and output shape: the convolutions, batch norms
/// and pools of all layers, forward and backward, fit with room to spare.
const DETAIL_ROWS: usize = 40;
/// Rows of `profile`'s table of the first warm-up step, by operation and output shape.
const FIRST_STEP_ROWS: usize = 15;
/// Rows of `profile`'s per-kernel table (the largest; the rest are summed in one row).
const KERNEL_ROWS: usize = 50;

/// The `profile` command: `warmup` training steps (the first of them profiled: where the
/// warm-up goes), one profiled step (the table of time
/// per operation, and per operation and output shape), on a GPU a second one cut at each
/// launch (the per-kernel table), then `timed` steps timed end to end with a synchronisation
/// after each.
pub fn run_profile(ds: &Cifar10, device: &Device, cfg: &TrainConfig, warmup: usize, timed: usize, cuda_graph: bool) -> Result<()> {
    if cuda_graph && !device.is_cuda() {
        return Err(Error::Invalid("--cuda-graph runs on a CUDA GPU only".into()));
    }
    if let Some((_, line)) = precompile_kernels(device)? {
        println!("{line}");
    }
    let (norm, mut model, mut pipeline) = fresh_network(ds, device, cfg)?;
    let mut state = SgdState::default();
    let n = cfg.train_len(&ds.train);
    let bs = cfg.batch_size;
    // Warm-up, the profiled step, `timed` synchronised steps, `timed` back to back, and with
    // --cuda-graph the graph's warm-up and capture and `timed` replays.
    // On a GPU, one more profiled step splits each operation at our kernels.
    let by_kernel = usize::from(device.is_cuda());
    let steps = warmup + 1 + by_kernel + 2 * timed + if cuda_graph { crate::graph::WARMUP_STEPS + 1 + timed } else { 0 };
    if n < steps * bs {
        return Err(Error::Invalid(format!("profiling {steps} steps of {bs} needs {} training images, have {n}", steps * bs)));
    }
    let order = data::epoch_order(n, cfg.seed, 0);
    let params = train::epoch_aug_params(cfg.seed, 0, n, cfg.cutout_inside);
    pipeline.begin_epoch(&ds.train, &order, &params)?;
    let lr = 0.01;
    let step = |model: &mut ResNet9, state: &mut SgdState, pipeline: &mut Pipeline, b: usize| -> Result<()> {
        let batch = pipeline.train_batch(&ds.train, &order, &params, b * bs..(b + 1) * bs, norm)?;
        train::train_step(model, state, batch, lr, cfg)?;
        Ok(())
    };
    let t0 = std::time::Instant::now();
    // The first step is profiled too: the first use of every operation (cuDNN's plan choice,
    // the loading of cuDNN's, cuBLAS's and our kernels at their first launch) falls in it, and
    // with events on the GPU's timeline an interval also holds the host's work before a launch
    // (the GPU waits for it), so its table says where a process's warm-up goes.
    let first = if warmup > 0 { Some(train::profile_step(&mut model, &mut state, &ds.train, &mut pipeline, &order, &params, 0..bs, norm, lr, cfg, false)?) } else { None };
    for b in usize::from(first.is_some())..warmup {
        step(&mut model, &mut state, &mut pipeline, b)?;
    }
    device.synchronize()?;
    let steps = if warmup == 1 { "1 warm-up step".to_string() } else { format!("{warmup} warm-up steps") };
    println!("Device: {device}; ResNet-9 width {}, batch {bs}; {steps} took {:.2}s", cfg.width, t0.elapsed().as_secs_f64());
    if let Some(first) = first {
        println!(
            "The first of them, time per operation ({}; the first use of each operation included: plan choices, kernels loaded at their first launch, and on a GPU the host's work before a launch, which the GPU waits for; the {FIRST_STEP_ROWS} largest rows):",
            if device.is_cuda() { "GPU time between CUDA events" } else { "host time" }
        );
        print!("{}", first.detail_table(FIRST_STEP_ROWS));
    }
    let prof = train::profile_step(&mut model, &mut state, &ds.train, &mut pipeline, &order, &params, warmup * bs..(warmup + 1) * bs, norm, lr, cfg, false)?;
    println!("One training step, time per operation ({}):", if device.is_cuda() { "GPU time between CUDA events" } else { "host time" });
    print!("{}", prof.table());
    println!("The same step by operation and output shape (which layer takes the time; the {DETAIL_ROWS} largest rows):");
    print!("{}", prof.detail_table(DETAIL_ROWS));
    if by_kernel == 1 {
        // A failure here costs this table only, not the step times below it.
        let b = warmup + 1;
        match train::profile_step(&mut model, &mut state, &ds.train, &mut pipeline, &order, &params, b * bs..(b + 1) * bs, norm, lr, cfg, true) {
            Ok(prof) => {
                println!(
                    "The next step, each operation split at its launches (our kernels by name, cuDNN's and cuBLAS's calls by what they do; `{}`: copies and memsets before an operation's first launch; an event per launch adds a little to every row; the {KERNEL_ROWS} largest rows):",
                    engine::profile::OTHER_WORK
                );
                print!("{}", prof.kernel_table(KERNEL_ROWS));
            }
            Err(e) => {
                println!("The step cut at each launch could not be profiled: {e}");
                device.synchronize()?;
            }
        }
    }
    let next = warmup + 1 + by_kernel;
    let mut times = Vec::new();
    for b in next..next + timed {
        let t = std::time::Instant::now();
        step(&mut model, &mut state, &mut pipeline, b)?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if !times.is_empty() {
        times.sort_by(f64::total_cmp);
        println!(
            "{} steps timed end to end: median {:.2} ms, min {:.2} ms, max {:.2} ms per step ({:.0} images/s at the median)",
            times.len(),
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            bs as f64 / (times[times.len() / 2] / 1e3)
        );
        // As in training: the host queues steps without waiting, the GPU runs them back to back.
        let first = next + timed;
        let t = std::time::Instant::now();
        for b in first..first + timed {
            step(&mut model, &mut state, &mut pipeline, b)?;
        }
        device.synchronize()?;
        println!("{timed} steps queued back to back: {:.2} ms per step", t.elapsed().as_secs_f64() * 1e3 / timed as f64);
    }
    if let (Device::Cuda(d), true, false) = (device, cuda_graph, times.is_empty()) {
        let per_epoch = n / bs;
        let mut sg = StepGraph::new(d, bs, per_epoch)?;
        if let Pipeline::Gpu(g) = &pipeline {
            sg.begin_epoch(g, &vec![lr; per_epoch])?;
        }
        let first = next + 2 * timed;
        let replays = first + crate::graph::WARMUP_STEPS + 1;
        let mut graph_step = |b: usize, model: &mut ResNet9, state: &mut SgdState, pipeline: &mut Pipeline| {
            sg.step(b, model, state, &ds.train, pipeline, &order, &params, b * bs..(b + 1) * bs, norm, lr, cfg)
        };
        for b in first..replays {
            graph_step(b, &mut model, &mut state, &mut pipeline)?;
        }
        device.synchronize()?;
        let t = std::time::Instant::now();
        for b in replays..replays + timed {
            graph_step(b, &mut model, &mut state, &mut pipeline)?;
        }
        device.synchronize()?;
        let ms = t.elapsed().as_secs_f64() * 1e3 / timed as f64;
        match sg.failure() {
            Some(why) => println!("CUDA graph: the capture failed ({why}); {timed} eager steps took {ms:.2} ms each"),
            None => println!(
                "{timed} captured steps (CUDA graph) queued back to back: {ms:.2} ms per step; the graph reserves {:.0} MiB{}",
                sg.reserved_bytes() as f64 / 1048576.0,
                match sg.eager_instead() {
                    0 => String::new(),
                    k => format!(" ({k} of them ran eagerly: other tensors held blocks of the graph)"),
                }
            ),
        }
    }
    profile_evaluation(&mut model, ds, &mut pipeline, norm, bs, timed)?;
    if let Device::Cuda(d) = device {
        println!(
            "driver allocations {}, pool hits {}, peak {:.0} MiB in tensors, {:.0} MiB held",
            d.driver_allocations(),
            d.pool_hits(),
            d.peak_in_use_bytes() as f64 / 1048576.0,
            d.peak_held_bytes() as f64 / 1048576.0
        );
        // Convolutions cuDNN has no algorithm for in their layout ran in NCHW between
        // layout conversions (see `ops::conv2d`); the breakdown above shows their cost.
        for r in d.conv_refusals() {
            println!("cuDNN refused a convolution, run in NCHW instead: {r}");
        }
        // The algorithms cuDNN's search chose: the step's speed depends on them.
        println!("convolution search: {}", search_rule(d));
        for line in d.graph_plan_lines() {
            println!("convolution plan (graph API): {line}");
        }
        for line in d.graph_refusals() {
            println!("no graph-API plan, the legacy API ran it: {line}");
        }
        if let Some(why) = d.add_into_refusal() {
            println!("cuDNN's backward-data refused to add into the gradient so far (beta = 1), so dx is added by a separate pass: {why}");
        }
        println!("our kernels' 16-byte variants: {}", if d.vector_kernels() { "on where shapes allow" } else { "off (--no-vector-kernels)" });
        println!(
            "the first convolution (3 channels, bf16 channels-last): {}",
            d.first_conv().describe()
        );
        match d.bnr_max_blocks() {
            0 => println!("batch norm + ReLU's channels-last 16-byte passes: one thread per 16-byte group (--bnr-max-blocks 0)"),
            engine::cuda::BNR_ONE_WAVE => println!(
                "batch norm + ReLU's channels-last 16-byte passes: one wave of 256-thread blocks ({} SMs times each kernel's resident blocks per SM)",
                d.sm_count()
            ),
            n => println!("batch norm + ReLU's channels-last 16-byte passes: at most {n} blocks of 256 threads"),
        }
        for line in d.conv_plan_lines() {
            println!("convolution plan: {line}");
        }
    }
    Ok(())
}

/// The test-set evaluation of one epoch, as training runs it after every epoch: one batch's
/// time per operation, then whole evaluations timed end to end (the first one untimed: it
/// plans the last, smaller batch's convolutions). The per-batch GPU time times the number of
/// batches, set against an evaluation's wall time, says whether the evaluation waits on the
/// GPU or on the host queuing its work.
fn profile_evaluation(model: &mut ResNet9, ds: &Cifar10, pipeline: &mut Pipeline, norm: Normalization, bs: usize, timed: usize) -> Result<()> {
    let n = ds.test.len();
    let device = model.device();
    if n == 0 || timed == 0 {
        return Ok(());
    }
    train::evaluate(model, &ds.test, pipeline, norm, bs, false, false)?;
    let prof = train::profile_eval_batch(model, &ds.test, pipeline, 0, bs.min(n), norm)?;
    println!("One evaluation batch of {}, time per operation ({}):", bs.min(n), if device.is_cuda() { "GPU time between CUDA events" } else { "host time" });
    print!("{}", prof.table());
    let runs = timed.min(3);
    let mut times = Vec::new();
    for _ in 0..runs {
        device.synchronize()?;
        let t = std::time::Instant::now();
        train::evaluate(model, &ds.test, pipeline, norm, bs, false, false)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let (batch_ms, batches) = (prof.total_ms(), n.div_ceil(bs));
    println!(
        "{runs} evaluations of the {n} test images ({batches} batches) timed end to end: median {:.1} ms, min {:.1} ms (one batch's operations above: {batch_ms:.2} ms, x{batches} = {:.1} ms)",
        times[times.len() / 2],
        times[0],
        batch_ms * batches as f64
    );
    Ok(())
}
