//! Adapter selection, capability detection and error capture.
//!
//! wgpu reports most failures asynchronously (device lost, validation, out of memory) and its
//! default handler panics. Here every submission runs inside error scopes and a device-lost
//! callback records the reason, so callers get a `Result` instead of a crash.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::pipelines::PipelineCache;
use crate::{Error, Result};

/// Optional features the kernels use when present. Each has a tested fallback; `GpuOptions`
/// can switch any of them off to force that fallback on an adapter that has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// `shader-f16`: f16 arithmetic in WGSL.
    pub f16: bool,
    /// Subgroup built-ins (native only in wgpu today).
    pub subgroups: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// The WGSL `packed_4x8_integer_dot_product` language feature (`dot4I8Packed`).
    pub packed_dot: bool,
    /// Timestamp queries at compute-pass boundaries.
    pub timestamps: bool,
    /// wgpu's experimental cooperative matrices (`enable wgpu_cooperative_matrix;`); the
    /// supported tile shapes are `Gpu::coopmat_shapes`.
    pub coopmat: bool,
}

/// Broad kinds of adapter; kernel variants are chosen per class (see `kernels::launch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdapterClass {
    /// A CPU rasterizer (lavapipe/llvmpipe, SwiftShader, WARP): wide per-invocation work, few barriers.
    Cpu,
    /// A discrete GPU: coalesced loads across a subgroup, many rows per workgroup.
    Discrete,
    /// Integrated GPUs and anything else.
    Integrated,
}

/// Which row of the kernels' launch table runs (`--plan`, `LOWBIT_PLAN`): the one for this
/// adapter's class, or a forced one. Forcing `Gpu` on lavapipe runs the GPU-class kernels (slowly)
/// so CI checks them against their CPU references; forcing `Cpu` on a GPU runs the llvmpipe ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelPlan {
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl KernelPlan {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" => Ok(KernelPlan::Auto),
            "cpu" => Ok(KernelPlan::Cpu),
            "gpu" => Ok(KernelPlan::Gpu),
            other => Err(Error::Invalid(format!("unknown kernel plan `{other}` (auto, cpu, gpu)"))),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Pick the first adapter whose name contains this (case-insensitive).
    pub adapter: Option<String>,
    /// Pretend the adapter lacks shader-f16.
    pub no_f16: bool,
    /// Pretend the adapter lacks subgroups.
    pub no_subgroups: bool,
    /// Pretend the WGSL packed integer dot product is unavailable.
    pub no_packed_dot: bool,
    /// Do not request cooperative matrices (an experimental wgpu feature) even where the
    /// adapter has them.
    pub no_coopmat: bool,
    /// Use a smaller storage-binding limit than the adapter's (to exercise tensor splitting).
    pub max_binding_size: Option<u64>,
    /// The launch-table row to use (`Auto`: the adapter's own class).
    pub plan: KernelPlan,
    /// The most bytes one planned graph may allocate (`LOWBIT_MEMORY_BUDGET`, e.g. `2GiB`).
    /// Unset: on a CPU adapter (lavapipe), whose "GPU memory" is the process's RAM, the RAM
    /// available when the device opened; on a GPU, no budget beyond the adapter's limits.
    pub memory_budget: Option<u64>,
    /// Fault injection for tests (`LOWBIT_FAULT_LOSE_DEVICE_AFTER=N`): the device is destroyed
    /// just before submission N+1, as a driver reset would lose it mid-run.
    pub lose_device_after: Option<u64>,
}

impl GpuOptions {
    /// Options from the environment: `LOWBIT_ADAPTER=substring`,
    /// `LOWBIT_DISABLE=f16,subgroups,packed_dot,coopmat` (forces the fallbacks everywhere) and
    /// `LOWBIT_PLAN=auto|cpu|gpu` (an unknown value is ignored with a warning).
    pub fn from_env() -> Self {
        let mut o = GpuOptions { adapter: std::env::var("LOWBIT_ADAPTER").ok(), ..Default::default() };
        if let Ok(plan) = std::env::var("LOWBIT_PLAN") {
            match KernelPlan::parse(&plan) {
                Ok(p) => o.plan = p,
                Err(e) => crate::warn!("LOWBIT_PLAN: {e}"),
            }
        }
        if let Ok(budget) = std::env::var("LOWBIT_MEMORY_BUDGET") {
            match super::memory::parse_bytes(&budget) {
                Some(b) => o.memory_budget = Some(b),
                None => crate::warn!("LOWBIT_MEMORY_BUDGET: `{budget}` is not a size (e.g. 512MiB, 2GiB)"),
            }
        }
        o.lose_device_after = std::env::var("LOWBIT_FAULT_LOSE_DEVICE_AFTER").ok().and_then(|n| n.trim().parse().ok());
        if let Ok(list) = std::env::var("LOWBIT_DISABLE") {
            // Unknown names are ignored here (the environment may serve other versions);
            // `--disable` rejects them.
            let _ = o.disable(&list);
        }
        o
    }

    /// Switches off the features named in a comma list (`f16`, `subgroups`, `packed_dot`,
    /// `coopmat`, `all`); errors on an unknown name after applying the known ones.
    pub fn disable(&mut self, list: &str) -> Result<()> {
        let mut unknown = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "f16" => self.no_f16 = true,
                "subgroups" => self.no_subgroups = true,
                "packed_dot" => self.no_packed_dot = true,
                "coopmat" => self.no_coopmat = true,
                "all" => (self.no_f16, self.no_subgroups, self.no_packed_dot, self.no_coopmat) = (true, true, true, true),
                other => unknown.push(other.to_string()),
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "unknown feature(s) {} (f16, subgroups, packed_dot, coopmat, all)",
                unknown.join(", ")
            )))
        }
    }

    /// Options that force every fallback path.
    pub fn fallback() -> Self {
        GpuOptions { no_f16: true, no_subgroups: true, no_packed_dot: true, no_coopmat: true, ..Self::from_env() }
    }

    /// These options with the GPU-class kernels forced (`--plan gpu`).
    pub fn gpu_plan(self) -> Self {
        GpuOptions { plan: KernelPlan::Gpu, ..self }
    }
}

/// The device, its queue, what it can do, and the pipeline cache.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub caps: Caps,
    /// The launch-table row kernels choose their variants by: `adapter_class` unless
    /// `GpuOptions::plan` forced another.
    pub class: AdapterClass,
    /// What the adapter is (for decisions about the machine, not the kernels: e.g. whether
    /// benchmarks must stream past a GPU's cache).
    pub adapter_class: AdapterClass,
    /// The cooperative-matrix tile shapes and types the adapter supports (empty unless
    /// `caps.coopmat`).
    pub coopmat_shapes: Vec<wgpu::CooperativeMatrixProperties>,
    max_binding: u64,
    /// See `GpuOptions::memory_budget` (resolved: `None` means no budget).
    memory_budget: Option<u64>,
    /// Submissions so far, and the count after which the device is destroyed (fault injection).
    submissions: AtomicU64,
    lose_after: Option<u64>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<Error>>>,
    pub(crate) pipelines: PipelineCache,
}

impl Gpu {
    /// Opens the default adapter, honouring `WGPU_BACKEND` and `LOWBIT_ADAPTER`/`LOWBIT_DISABLE`.
    pub fn new() -> Result<Self> {
        Self::with_options(&GpuOptions::from_env())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(opts: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::open(opts))
    }

    /// The browser's main thread cannot block on the adapter request: use `Gpu::open(..).await`
    /// (or share a device with `from_wgpu`, as the web viewer does).
    #[cfg(target_arch = "wasm32")]
    pub fn with_options(_opts: &GpuOptions) -> Result<Self> {
        Err(Error::NoAdapter(" synchronously in the browser (use `Gpu::open(..).await`)".into()))
    }

    /// Every adapter wgpu can see under `WGPU_BACKEND` (for `--adapter` and `lowbit devices`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn adapters() -> Vec<wgpu::AdapterInfo> {
        let instance = instance();
        let backends = backends();
        pollster::block_on(instance.enumerate_adapters(backends)).iter().map(|a| a.get_info()).collect()
    }

    /// The browser offers one adapter, through an asynchronous request only.
    #[cfg(target_arch = "wasm32")]
    pub fn adapters() -> Vec<wgpu::AdapterInfo> {
        Vec::new()
    }

    /// Runs an engine future to completion: the sync API (`read_bytes`, `PriorSession::step`,
    /// `generate`, ...) is its async twin under this, so both targets share one code path.
    /// Natively it blocks (the futures only wait on `device.poll`, so they finish promptly).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn block_on<T, E: From<Error>>(fut: impl Future<Output = std::result::Result<T, E>>) -> std::result::Result<T, E> {
        pollster::block_on(fut)
    }

    /// The browser's main thread must not block, so the future is polled once: work that
    /// needs no readback completes; anything that would have to wait for the GPU is an error
    /// that names the async version to use instead.
    #[cfg(target_arch = "wasm32")]
    pub fn block_on<T, E: From<Error>>(fut: impl Future<Output = std::result::Result<T, E>>) -> std::result::Result<T, E> {
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => Err(E::from(Error::Invalid(
                "this call waits for a GPU readback, which cannot block in the browser: use its async version (e.g. read_bytes_async, to_vec_f32_async, generate_classes_async)".into(),
            ))),
        }
    }

    /// Opens the best adapter (as `with_options`) without blocking: the way in on the web.
    pub async fn open(opts: &GpuOptions) -> Result<Self> {
        let instance = instance();
        let backends = backends();
        let mut adapters = instance.enumerate_adapters(backends).await;
        // Prefer real GPUs, then Vulkan over GL (the GL backend lacks compute limits on some drivers).
        adapters.sort_by_key(|a| adapter_rank(&a.get_info()));
        let adapter = match &opts.adapter {
            Some(want) => {
                let w = want.to_lowercase();
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&w))
                    .ok_or_else(|| Error::NoAdapter(format!(" matching `{want}` (have: {})", names.join(", "))))?
            }
            None => adapters.into_iter().next().ok_or_else(|| {
                Error::NoAdapter(
                    " (on Linux without a GPU install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)".into(),
                )
            })?,
        };
        let mut wanted = Self::wanted_features(&adapter);
        let mut experimental = wgpu::ExperimentalFeatures::disabled();
        // Cooperative matrices are opt-in twice: wgpu marks them experimental, so they are
        // requested only here (not in `wanted_features`, whose callers may not opt in) and only
        // where the adapter has them, and `--disable coopmat` leaves them off entirely.
        let coopmat = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        if adapter.features().contains(coopmat) && !opts.no_coopmat {
            wanted |= coopmat;
            // SAFETY: the only shader that uses the feature is the roofline probe
            // (shaders/roofline.wgsl), which the tests validate with naga and check
            // numerically where the feature exists; `--disable coopmat` avoids it.
            experimental = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("lowbit"),
                required_features: wanted,
                required_limits: limits.clone(),
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        Ok(Self::from_wgpu(&instance, &adapter, device, queue, opts))
    }

    /// The optional features the kernels can use that `adapter` has: request these when
    /// creating a device for `from_wgpu` elsewhere (e.g. in a UI toolkit's wgpu setup).
    pub fn wanted_features(adapter: &wgpu::Adapter) -> wgpu::Features {
        let features = adapter.features();
        let mut wanted = wgpu::Features::empty();
        for f in [wgpu::Features::SHADER_F16, wgpu::Features::SUBGROUP, wgpu::Features::TIMESTAMP_QUERY] {
            if features.contains(f) {
                wanted |= f;
            }
        }
        wanted
    }

    /// A `Gpu` on a device someone else created (the viewer shares eframe's device this way).
    /// Caps follow the device's enabled features, so request `wanted_features` and the
    /// adapter's limits when creating it; the device-lost and uncaptured-error handlers are
    /// replaced by this `Gpu`'s.
    pub fn from_wgpu(instance: &wgpu::Instance, adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue, opts: &GpuOptions) -> Self {
        let info = adapter.get_info();
        let limits = device.limits();
        let lost = Arc::new(Mutex::new(None));
        let lost2 = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lost2.lock().unwrap() = Some(lost_message(reason, &msg));
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let uncaptured2 = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = uncaptured2.lock().unwrap();
            if slot.is_none() {
                *slot = Some(convert_error(e));
            }
        }));

        let dev_features = device.features();
        let lang = instance.wgsl_language_features();
        let caps = Caps {
            f16: dev_features.contains(wgpu::Features::SHADER_F16) && !opts.no_f16,
            subgroups: dev_features.contains(wgpu::Features::SUBGROUP) && !opts.no_subgroups,
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            packed_dot: lang.contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct) && !opts.no_packed_dot,
            timestamps: dev_features.contains(wgpu::Features::TIMESTAMP_QUERY),
            coopmat: dev_features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) && !opts.no_coopmat,
        };
        let coopmat_shapes = if caps.coopmat { adapter.cooperative_matrix_properties() } else { Vec::new() };
        let adapter_class = match info.device_type {
            wgpu::DeviceType::Cpu => AdapterClass::Cpu,
            wgpu::DeviceType::DiscreteGpu => AdapterClass::Discrete,
            _ if info.name.to_lowercase().contains("llvmpipe") || info.name.contains("SwiftShader") => {
                AdapterClass::Cpu
            }
            _ => AdapterClass::Integrated,
        };
        let class = match opts.plan {
            KernelPlan::Auto => adapter_class,
            KernelPlan::Cpu => AdapterClass::Cpu,
            // The discrete row: the GPU-class kernels with the largest tiles.
            KernelPlan::Gpu => AdapterClass::Discrete,
        };
        let adapter_max = limits.max_storage_buffer_binding_size;
        let max_binding = opts.max_binding_size.map_or(adapter_max, |m| m.min(adapter_max)) & !255;
        Gpu {
            device,
            queue,
            info,
            limits,
            caps,
            class,
            adapter_class,
            coopmat_shapes,
            max_binding,
            memory_budget: opts.memory_budget.or_else(|| (adapter_class == AdapterClass::Cpu).then(super::memory::available_ram).flatten()),
            submissions: AtomicU64::new(0),
            lose_after: opts.lose_device_after,
            lost,
            uncaptured,
            pipelines: PipelineCache::default(),
        }
    }

    /// Adapter name plus backend, as printed by benchmarks.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// The largest storage binding a kernel may use, in bytes (a multiple of 256).
    /// Tensors above it are split across several bindings by the kernels that take them.
    pub fn max_binding_size(&self) -> u64 {
        self.max_binding
    }

    /// Split `rows` rows of `row_bytes` bytes each into consecutive ranges that each fit one
    /// storage binding. Errors if a single row is larger than a binding.
    pub fn split_rows(&self, rows: usize, row_bytes: u64) -> Result<Vec<std::ops::Range<usize>>> {
        if row_bytes > self.max_binding {
            return Err(Error::Invalid(format!(
                "one row of {row_bytes} bytes is larger than the adapter's storage binding limit ({} bytes)",
                self.max_binding
            )));
        }
        let per = ((self.max_binding / row_bytes.max(1)) as usize).max(1);
        Ok((0..rows).step_by(per).map(|s| s..(s + per).min(rows)).collect())
    }

    pub fn encoder(&self) -> Encoder {
        Encoder::new(self)
    }

    /// Submits the recorded work and reports any error it raised.
    pub fn submit(&self, enc: Encoder) -> Result<wgpu::SubmissionIndex> {
        let n = self.submissions.fetch_add(1, Ordering::Relaxed);
        if self.lose_after.is_some_and(|after| n >= after) {
            self.lose_device("LOWBIT_FAULT_LOSE_DEVICE_AFTER");
        }
        self.check_lost()?;
        let index = self.scoped(|| self.queue.submit([enc.finish()]))?;
        self.check_lost()?;
        Ok(index)
    }

    /// Blocks until all submitted work is done. In the browser this returns at once: the
    /// browser polls the device itself and the queue keeps submissions in order; what must
    /// wait for results awaits a readback instead (`read_bytes_async`).
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.lost_or(Error::DeviceLost(e.to_string())))?;
        self.check_lost()
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they catch
    /// into an `Error`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn scoped<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o.or(v) {
            return Err(self.lost_or(convert_error(e)));
        }
        self.check_uncaptured()?;
        Ok(out)
    }

    /// In the browser a popped scope's error arrives only after control returns to the event
    /// loop, and the main thread must never block waiting for it. Pushing scopes and dropping
    /// their futures would swallow the errors, so no scopes here: every error reaches the
    /// device's uncaptured-error handler instead, which fills the slot checked below, and the
    /// async readbacks (`read_bytes_async`) check it again after each await, when the browser
    /// has had the chance to report errors of the work submitted before. An error thus
    /// surfaces at the next check rather than at the call that caused it.
    #[cfg(target_arch = "wasm32")]
    pub fn scoped<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let out = f();
        self.check_lost()?;
        self.check_uncaptured()?;
        Ok(out)
    }

    /// The first error no scope caught since the last check, if any.
    pub(crate) fn check_uncaptured(&self) -> Result<()> {
        // Taken first: `lost_or` polls the device, whose handlers lock these slots.
        let taken = self.uncaptured.lock().unwrap().take();
        match taken {
            Some(e) => Err(self.lost_or(e)),
            None => Ok(()),
        }
    }

    /// Command buffers submitted so far (tests check that refused work submitted nothing).
    pub fn submissions(&self) -> u64 {
        self.submissions.load(Ordering::Relaxed)
    }

    /// Whether the device is lost: nothing more can run on it, a new `Gpu` is needed (the
    /// viewer's engine opens one, see `Engine::recover`).
    pub fn is_lost(&self) -> bool {
        if self.lost.lock().unwrap().is_none() {
            // A destroyed device's callback runs at the next poll that finds the queue idle.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        self.lost.lock().unwrap().is_some()
    }

    /// Destroys the device as a driver reset would (tests and fault injection): every later
    /// call fails with `Error::DeviceLost` naming `why`.
    pub fn lose_device(&self, why: &str) {
        self.device.destroy();
        // The callback may only run at the next poll: record the loss now, so the very next
        // check reports it whatever the backend's timing.
        let mut lost = self.lost.lock().unwrap();
        if lost.is_none() {
            *lost = Some(format!("destroyed on purpose ({why}); run again without it"));
        }
    }

    /// The memory budget one planned graph must fit (see `GpuOptions::memory_budget`).
    pub fn memory_budget(&self) -> Option<u64> {
        self.memory_budget
    }

    pub(crate) fn check_lost(&self) -> Result<()> {
        match self.lost.lock().unwrap().clone() {
            Some(msg) => Err(Error::DeviceLost(msg)),
            None => Ok(()),
        }
    }

    /// A lost device makes every later call fail with a confusing message; report the loss instead.
    pub(crate) fn lost_or(&self, e: Error) -> Error {
        if self.lost.lock().unwrap().is_none() {
            // After `Device::destroy` wgpu calls the device-lost callback only from a poll that
            // finds the queue idle; until then calls fail with validation errors about the
            // dead objects. One bounded wait lets the callback run, so the error names the
            // loss (this is the error path only; a real driver loss calls it at once).
            let _ = self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(std::time::Duration::from_secs(2)) });
        }
        let lost = self.lost.lock().unwrap().clone();
        match lost {
            Some(msg) => Error::DeviceLost(msg),
            None => e,
        }
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends();
    // Validation layers are slow and noisy; wgpu's own validation still runs.
    desc.flags.remove(wgpu::InstanceFlags::VALIDATION);
    wgpu::Instance::new(desc)
}

/// What a lost device means for the user, from wgpu's reason and the driver's message.
fn lost_message(reason: wgpu::DeviceLostReason, msg: &str) -> String {
    let why = match reason {
        wgpu::DeviceLostReason::Destroyed => "it was destroyed (Device::destroy)",
        wgpu::DeviceLostReason::Unknown => "the driver gave it up (a GPU reset, a driver crash or a removed GPU)",
    };
    let detail = if msg.trim().is_empty() { String::new() } else { format!(" ({})", msg.trim()) };
    format!("{why}{detail}; nothing more can run on it: run again (the viewer opens a new device by itself)")
}

fn convert_error(e: wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
        wgpu::Error::Validation { description, .. } => Error::Validation(description),
        wgpu::Error::Internal { description, .. } => Error::Validation(description),
    }
}

/// Records dispatches into one command encoder; `Gpu::submit` sends it. Dispatches share one
/// compute pass until something else (a copy, a clear) needs the encoder; under a profiler each
/// dispatch gets its own pass so timestamps can bracket it.
pub struct Encoder {
    pub(crate) inner: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Timestamp query slots written around each dispatch when profiling.
    pub(crate) profiler: Option<super::timing::PassTimer>,
    /// Bind groups reused across runs of a planned graph (see `graph::Plan`).
    pub(crate) bind_groups: Option<Arc<Mutex<super::pipelines::BindGroupCache>>>,
    /// Dispatches recorded so far.
    pub(crate) dispatches: u32,
}

impl Encoder {
    fn new(gpu: &Gpu) -> Self {
        let inner = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("lowbit") });
        Encoder { inner, pass: None, profiler: None, bind_groups: None, dispatches: 0 }
    }

    /// Dispatches recorded so far (skipped empty ones not counted).
    pub fn dispatches(&self) -> u32 {
        self.dispatches
    }

    /// The encoder itself, for copies and clears (ends the open compute pass).
    pub fn raw(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.inner
    }

    /// The compute pass the next dispatch goes into.
    pub(crate) fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        if let Some(timer) = self.profiler.as_mut() {
            self.pass = None;
            let timestamp_writes = timer.next_pass();
            let pass = self.inner.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
            return self.pass.insert(pass.forget_lifetime());
        }
        if self.pass.is_none() {
            let pass = self.inner.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            self.pass = Some(pass.forget_lifetime());
        }
        self.pass.as_mut().unwrap()
    }

    /// Reuse bind groups from `cache` (and store new ones there) for this encoder's dispatches.
    pub fn with_bind_group_cache(mut self, cache: Arc<Mutex<super::pipelines::BindGroupCache>>) -> Self {
        self.bind_groups = Some(cache);
        self
    }

    pub(crate) fn finish(mut self) -> wgpu::CommandBuffer {
        self.pass = None;
        self.inner.finish()
    }
}

/// Sort key of adapters, best first: real GPUs, then Vulkan/Metal/DX12 over GL (whose compute
/// limits are missing on some drivers).
pub fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, bool) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    (ty, info.backend == wgpu::Backend::Gl)
}

/// `WGPU_BACKEND` when set (vulkan, metal, dx12, gl, ...), else the primary backends: GL is
/// opt-in because its compute support is partial and probing EGL is noisy on headless machines.
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)
}
