//! The compute device of numeric ops: `--device auto|cpu|wgpu`, resolved once per process.
//!
//! Ops are written once against burn's tensors and never name a backend; the CLI hands the
//! user's choice to the ops registry (`drover_ops::registry(choice)`), the numeric ops keep it,
//! and an op calls [`resolve`] when it first needs a device (so `plan` never probes adapters). `auto` takes wgpu when a hardware adapter exists and otherwise
//! the CPU backend (burn's `flex`), and says which it took and why. A software rasteriser such as
//! Mesa's lavapipe counts as no GPU for `auto` (it is slower than the CPU backend), but
//! `--device wgpu` uses it: that is how CI runs the GPU code path without a GPU.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use drover_engine::OpError;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Wgpu,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            other => Err(format!("unknown device `{other}`: expected auto, cpu or wgpu")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
        })
    }
}

/// Which backend a resolved device runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Wgpu,
}

/// A device ready for tensors, with words for the run record.
#[derive(Clone, Debug)]
pub struct Compute {
    /// The device with autodiff enabled.
    pub device: Device,
    pub backend: Backend,
    /// e.g. `wgpu: NVIDIA H200 (Vulkan)` or `cpu (flex)`.
    pub label: String,
    /// Why this device, for `auto`: e.g. `no wgpu adapter found`.
    pub reason: String,
}

impl Compute {
    /// The CPU backend, with autodiff.
    pub fn cpu(reason: impl Into<String>) -> Compute {
        Compute {
            device: Device::flex().autodiff(),
            backend: Backend::Cpu,
            label: "cpu (flex)".into(),
            reason: reason.into(),
        }
    }

    /// `label (reason)`, for messages and run records.
    pub fn describe(&self) -> String {
        if self.reason.is_empty() { self.label.clone() } else { format!("{} ({})", self.label, self.reason) }
    }
}

/// The name of the run-record note that says which device a stage computed on.
pub const NOTE: &str = "device";

/// Whether `device` (with or without autodiff) is the CPU backend, flex: where element-wise work
/// runs on one core and the ops spread it over threads themselves.
pub fn is_cpu(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// `f` of each item, in order: the first on this thread, each other on a thread of its own, all
/// at once (two batches on a 2-core CPU keep both cores busy where flex runs element-wise work
/// on one). A panic in any of them is resumed here.
pub fn on_threads<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let Some((first, rest)) = items.split_first() else { return Vec::new() };
    std::thread::scope(|s| {
        let others: Vec<_> = rest.iter().map(|item| s.spawn(|| f(item))).collect();
        let mut out = vec![f(first)];
        for other in others {
            out.push(other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        out
    })
}

/// Resolves the user's choice to a device. The first resolution of each choice is remembered for
/// the life of the process: probing adapters is slow.
pub fn resolve(choice: DeviceChoice) -> Result<Arc<Compute>, OpError> {
    static RESOLVED: Mutex<BTreeMap<DeviceChoice, Arc<Compute>>> = Mutex::new(BTreeMap::new());
    let mut resolved = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = resolved.get(&choice) {
        return Ok(c.clone());
    }
    let compute = Arc::new(match choice {
        DeviceChoice::Cpu => Compute::cpu("--device cpu"),
        DeviceChoice::Auto => auto(),
        DeviceChoice::Wgpu => forced_wgpu()?,
    });
    resolved.insert(choice, compute.clone());
    Ok(compute)
}

#[cfg(feature = "wgpu")]
fn auto() -> Compute {
    let adapters = wgpu_probe::adapters();
    match adapters.iter().find(|a| a.hardware) {
        Some(a) => wgpu_compute(a, "auto: a GPU adapter was found".into()),
        None if adapters.is_empty() => Compute::cpu("auto: no wgpu adapter found"),
        None => Compute::cpu(format!(
            "auto: the only wgpu adapter is {}, a software renderer; --device wgpu would use it",
            adapters[0].name
        )),
    }
}

#[cfg(not(feature = "wgpu"))]
fn auto() -> Compute {
    Compute::cpu("auto: this build of drover has no wgpu support")
}

#[cfg(feature = "wgpu")]
fn forced_wgpu() -> Result<Compute, OpError> {
    let adapters = wgpu_probe::adapters();
    let best = adapters.iter().find(|a| a.hardware).or(adapters.first());
    match best {
        Some(a) => Ok(wgpu_compute(a, "--device wgpu".into())),
        None => Err(OpError::environment(
            "--device wgpu: no wgpu adapter found (no GPU driver, and no software Vulkan driver); \
             install a GPU driver or Mesa's lavapipe (`apt-get install mesa-vulkan-drivers libvulkan1`), \
             or use --device cpu",
        )),
    }
}

#[cfg(not(feature = "wgpu"))]
fn forced_wgpu() -> Result<Compute, OpError> {
    Err(OpError::environment(
        "--device wgpu: this build of drover has no wgpu support; rebuild with the default features, or use --device cpu",
    ))
}

#[cfg(feature = "wgpu")]
fn wgpu_compute(adapter: &wgpu_probe::Adapter, reason: String) -> Compute {
    use burn::tensor::DeviceKind;
    let kind = match adapter.kind {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(0),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(0),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(0),
        wgpu::DeviceType::Cpu => DeviceKind::Cpu,
        wgpu::DeviceType::Other => DeviceKind::DefaultDevice,
    };
    Compute {
        device: Device::wgpu(kind).autodiff(),
        backend: Backend::Wgpu,
        label: format!("wgpu: {} ({:?})", adapter.name, adapter.api),
        reason,
    }
}

#[cfg(feature = "wgpu")]
mod wgpu_probe {
    /// One adapter wgpu can open.
    pub struct Adapter {
        pub name: String,
        pub kind: wgpu::DeviceType,
        pub api: wgpu::Backend,
        /// A real GPU, not a software renderer.
        pub hardware: bool,
    }

    /// Every adapter, real GPUs first, discrete before integrated.
    pub fn adapters() -> Vec<Adapter> {
        // Vulkan, Metal and DX12 only: burn's wgpu backend computes on these, and probing GL
        // would open a display connection (and complain when there is none).
        let descriptor = wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        };
        let instance = wgpu::Instance::new(descriptor);
        // Native wgpu resolves adapter enumeration at once; a one-thread runtime drives it.
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
            return Vec::new();
        };
        let found = rt.block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
        let mut out: Vec<Adapter> = found
            .iter()
            .map(|a| {
                let info = a.get_info();
                let hardware = matches!(
                    info.device_type,
                    wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu
                );
                Adapter { name: info.name, kind: info.device_type, api: info.backend, hardware }
            })
            .collect();
        let rank = |a: &Adapter| match a.kind {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        out.sort_by_key(rank);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print() {
        for (text, choice) in [("auto", DeviceChoice::Auto), ("CPU", DeviceChoice::Cpu), ("wgpu", DeviceChoice::Wgpu)] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice);
        }
        assert_eq!(DeviceChoice::Wgpu.to_string(), "wgpu");
        assert_eq!("tpu".parse::<DeviceChoice>().unwrap_err(), "unknown device `tpu`: expected auto, cpu or wgpu");
    }

    #[test]
    fn cpu_is_the_flex_backend_and_says_why() {
        let c = resolve(DeviceChoice::Cpu).unwrap();
        assert_eq!(c.backend, Backend::Cpu);
        assert_eq!(c.describe(), "cpu (flex) (--device cpu)");
    }
}
