//! Peak memory of one training step, measured on the CPU with a counting allocator (this
//! file is its own test binary, with one test, so nothing else allocates meanwhile).
//!
//! `Tape::backward` keeps every activation until the end of the walk, while the largest
//! gradients (those of the first, full-resolution layers) are made at that end;
//! `Tape::backward_releasing` frees each activation once the walk has passed it. The second
//! must give the same gradients with a lower peak, and the training step must use it. On a
//! GPU the same frees lower the bytes in use (the CPU ops' temporaries differ from cuDNN's,
//! so the ratio here is not the GPU's); the memory held from the driver falls less, since
//! the pool reuses a freed block only for a request of exactly its size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use engine::{DType, Tensor};
use model::resnet::ResNet9;
use ops::Graph;
use rand::SeedableRng;

/// The system allocator, counting the bytes allocated now and their maximum.
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the highest point of `f`, above what was allocated when it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = NOW.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - start)
}

/// Byte counts, not timings. The CPU convolution keeps scratch buffers per rayon job, so the
/// keeping walk's peak depends on the thread count (fixed at 2 here) and a little on how
/// rayon splits the work; the bound below leaves room for that.
#[test]
fn releasing_activations_during_backward_lowers_the_peak_and_keeps_the_gradients() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(measure);
}

fn measure() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let net = ResNet9::new(0.25, 0.125, DType::F32, &mut rng).unwrap();
    let x = Tensor::randn(&[64, 3, 32, 32], DType::F32, 1.0, &mut rng);
    let labels: Vec<u32> = (0..64).map(|i| (i * 7 % 10) as u32).collect();

    // One forward and backward on a fresh tape: the gradients, as f64 vectors.
    let step = |releasing: bool| {
        let mut bn = net.bn.clone();
        let mut g = Graph::new(&net.params);
        let input = g.input(x.clone());
        let logits = net.arch.forward(&mut g, input, true, &mut bn).unwrap();
        let loss = ops::cross_entropy::softmax_cross_entropy(&mut g, logits, &labels, 0.0).unwrap();
        let grads = if releasing { g.backward_releasing(loss, &[loss, logits]) } else { g.backward(loss) };
        let grads = grads.unwrap().into_param_grads(net.params.len()).unwrap();
        grads.into_iter().map(|g| g.unwrap().to_f64_vec()).collect::<Vec<_>>()
    };
    let (kept, peak_kept) = peak_of(|| step(false));
    let (released, peak_released) = peak_of(|| step(true));
    assert_eq!(kept, released, "releasing values must not change a single gradient bit");

    // The training step (SGD included) goes through the releasing walk.
    let cfg = model::train::TrainConfig { width: 0.25, out_scale: 0.125, ..Default::default() };
    let mut trained = net.clone();
    let mut state = ops::sgd::SgdState::default();
    let batch = model::pipeline::Batch { x: x.clone(), labels: labels.clone(), device_labels: None };
    let (result, peak_train) = peak_of(|| model::train::train_step(&mut trained, &mut state, batch, 0.01, &cfg));
    result.unwrap();

    let mib = |b: usize| b as f64 / 1048576.0;
    eprintln!(
        "peak above the start, width 0.25, batch 64, f32, CPU: backward {:.1} MiB, backward_releasing {:.1} MiB, train_step {:.1} MiB",
        mib(peak_kept),
        mib(peak_released),
        mib(peak_train)
    );
    // Measured on the development VM (2 cores): 62.2 MiB keeping, 51.4 MiB releasing, 50.6 MiB
    // for train_step on 2026-11-25; 47.7, 37.4 and 36.6 MiB on 2026-11-26, once the forward
    // also freed the pooled units' convolution outputs (max-pooling saves its argmax, not its
    // input). What remains is mostly the activations (the forward already frees the batch
    // norms' outputs) and the CPU convolution's per-group dW partials. The bound (0.9) sits
    // between the measured ratio (0.78) and a walk that frees nothing (1.0), so it catches
    // that without tripping on a small change in the CPU ops' temporaries.
    assert!(
        (peak_released as f64) < 0.9 * peak_kept as f64,
        "releasing should save at least 10% of the step's peak: {peak_released} vs {peak_kept} bytes"
    );
    assert!(
        (peak_train as f64) < 0.9 * peak_kept as f64,
        "train_step's peak {peak_train} is not below the keeping walk's {peak_kept}: does it release?"
    );
}
