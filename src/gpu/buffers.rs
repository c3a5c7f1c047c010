//! Tensors: a storage buffer plus a shape. Activations are f32 (or u32/i32 for token ids);
//! packed low-bit weights live in their own structs (`kernels::matmul::QLinear`) built on
//! the same upload and readback helpers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::Gpu;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
    I32,
}

impl DType {
    pub fn size(self) -> usize {
        4
    }
}

/// A GPU tensor. Cloning shares the buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buffer: Arc<wgpu::Buffer>,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }

    /// A zero-filled tensor.
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        check_shape(shape)?;
        // Checked: a shape from a huge batch or image must be refused, not overflow.
        let bytes = shape.iter().try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d as u64)).unwrap_or(u64::MAX);
        let size = padded_size(bytes);
        gpu.check_buffer(size, format_args!("a {dtype:?} tensor of shape {shape:?}"))?;
        let buffer = gpu.scoped(|| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tensor"),
                size,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            })
        })?;
        Ok(Tensor { buffer: Arc::new(buffer), shape: shape.to_vec(), dtype })
    }

    pub fn from_f32(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Self::from_pod(gpu, shape, DType::F32, data)
    }

    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        Self::from_pod(gpu, shape, DType::U32, data)
    }

    pub fn from_i32(gpu: &Gpu, shape: &[usize], data: &[i32]) -> Result<Tensor> {
        Self::from_pod(gpu, shape, DType::I32, data)
    }

    fn from_pod<T: bytemuck::Pod>(gpu: &Gpu, shape: &[usize], dtype: DType, data: &[T]) -> Result<Tensor> {
        check_shape(shape)?;
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::Shape(format!(
                "tensor of shape {shape:?} needs {numel} elements, got {}",
                data.len()
            )));
        }
        let buffer = gpu.upload(bytemuck::cast_slice(data), "tensor")?;
        Ok(Tensor { buffer: Arc::new(buffer), shape: shape.to_vec(), dtype })
    }

    /// Same buffer, another shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::Shape(format!("cannot reshape {:?} to {shape:?}", self.shape)));
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    pub fn to_vec_f32(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        Gpu::block_on(self.to_vec_f32_async(gpu))
    }

    /// `to_vec_f32` without blocking (the only way in the browser).
    pub async fn to_vec_f32_async(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        if self.dtype != DType::F32 {
            return Err(Error::Invalid(format!("to_vec_f32 on a {:?} tensor", self.dtype)));
        }
        Ok(bytemuck::cast_slice(&gpu.read_bytes_async(&self.buffer, self.bytes()).await?).to_vec())
    }

    pub fn to_vec_u32(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        Gpu::block_on(self.to_vec_u32_async(gpu))
    }

    /// `to_vec_u32` without blocking (the only way in the browser).
    pub async fn to_vec_u32_async(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        if self.dtype == DType::F32 {
            return Err(Error::Invalid("to_vec_u32 on an f32 tensor".into()));
        }
        Ok(bytemuck::cast_slice(&gpu.read_bytes_async(&self.buffer, self.bytes()).await?).to_vec())
    }

    /// Errors unless the shape is exactly `want` (for kernels' argument checks).
    pub fn expect_shape(&self, what: &str, want: &[usize]) -> Result<()> {
        if self.shape != want {
            return Err(Error::Shape(format!("{what}: expected shape {want:?}, got {:?}", self.shape)));
        }
        Ok(())
    }

    pub fn expect_dtype(&self, what: &str, want: DType) -> Result<()> {
        if self.dtype != want {
            return Err(Error::Invalid(format!("{what}: expected {want:?}, got {:?}", self.dtype)));
        }
        Ok(())
    }
}

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Storage bindings must be non-empty and sized in whole u32 words.
fn padded_size(bytes: u64) -> u64 {
    bytes.max(4).div_ceil(4) * 4
}

fn check_shape(shape: &[usize]) -> Result<()> {
    if shape.contains(&0) {
        return Err(Error::Shape(format!("zero-sized shape {shape:?}")));
    }
    Ok(())
}

impl Gpu {
    /// A storage buffer holding `bytes` (padded to whole words). Fails with a clear error if it
    /// exceeds one storage binding: callers that take larger tensors split them first
    /// (`Gpu::split_rows`).
    pub fn upload(&self, bytes: &[u8], label: &str) -> Result<wgpu::Buffer> {
        let size = padded_size(bytes.len() as u64);
        self.check_buffer(size, label)?;
        let mut padded;
        let contents = if size as usize != bytes.len() {
            padded = bytes.to_vec();
            padded.resize(size as usize, 0);
            &padded[..]
        } else {
            bytes
        };
        self.buffer_init(label, contents, STORAGE_USAGE)
    }

    /// A buffer created holding `contents` (`DeviceExt::create_buffer_init` without its
    /// panic): on a lost device wgpu's helper `expect`s the mapping it cannot get, so the
    /// mapping's failure is an `Error::DeviceLost` here instead.
    pub fn buffer_init(&self, label: &str, contents: &[u8], usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        self.check_lost()?;
        let buffer = self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: padded_size(contents.len() as u64), usage, mapped_at_creation: true })
        })?;
        let mut view = buffer
            .get_mapped_range_mut(..)
            .map_err(|e| self.lost_or_uncaptured(Error::DeviceLost(format!("{label}: mapping a new buffer failed: {e}"))))?;
        view.slice(..contents.len()).copy_from_slice(contents);
        drop(view);
        buffer.unmap();
        Ok(buffer)
    }

    pub fn upload_u32(&self, words: &[u32], label: &str) -> Result<wgpu::Buffer> {
        self.upload(bytemuck::cast_slice(words), label)
    }

    /// Copies `len` bytes from the start of `buffer` back to the CPU (blocking; in the browser
    /// an error, see `Gpu::block_on`).
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        Gpu::block_on(self.read_bytes_async(buffer, len))
    }

    /// Copies `len` bytes from the start of `buffer` back to the CPU. Natively the device is
    /// polled until the copy is mapped, so the future is ready when first polled; in the
    /// browser the mapping completes only once control returns to the event loop, so this
    /// really waits there.
    pub async fn read_bytes_async(&self, buffer: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        let size = padded_size(len);
        let staging = self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut enc = self.encoder();
        enc.raw().copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.submit(enc)?;
        let mapped = OneShot::default();
        let done = mapped.clone();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| done.send(r));
        self.wait()?;
        match mapped.await {
            Ok(()) => {}
            Err(e) => return Err(self.lost_or_uncaptured(Error::DeviceLost(format!("readback failed: {e}")))),
        }
        // In the browser, errors of the work before this readback have been reported by now.
        self.check_lost()?;
        self.check_uncaptured()?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::DeviceLost(format!("readback mapping failed: {e}")))?;
        let out = view[..len as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Resolves once all work submitted so far has finished: natively after a blocking poll,
    /// in the browser when the queue reports it (the per-node profiler's clock stop).
    pub async fn done_async(&self) -> Result<()> {
        let done = OneShot::default();
        let finished = done.clone();
        self.queue.on_submitted_work_done(move || finished.send(()));
        self.wait()?;
        done.await;
        self.check_lost()?;
        self.check_uncaptured()
    }

    /// A failed mapping usually follows an earlier error: report that one when there is one.
    fn lost_or_uncaptured(&self, e: Error) -> Error {
        match self.check_uncaptured() {
            Err(earlier) => earlier,
            Ok(()) => self.lost_or(e),
        }
    }
}

/// A single-value channel whose receiving end is a future: `map_async`'s callback sends,
/// the readback awaits (no executor-specific channel needed on either target).
struct OneShot<T>(Arc<Mutex<(Option<T>, Option<Waker>)>>);

impl<T> Clone for OneShot<T> {
    fn clone(&self) -> Self {
        OneShot(self.0.clone())
    }
}

impl<T> Default for OneShot<T> {
    fn default() -> Self {
        OneShot(Arc::new(Mutex::new((None, None))))
    }
}

impl<T> OneShot<T> {
    fn send(&self, value: T) {
        let mut slot = self.0.lock().unwrap();
        slot.0 = Some(value);
        if let Some(waker) = slot.1.take() {
            waker.wake();
        }
    }
}

impl<T> Future for OneShot<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.0.lock().unwrap();
        match slot.0.take() {
            Some(value) => Poll::Ready(value),
            None => {
                slot.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
