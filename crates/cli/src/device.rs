//! The `--device` flag: one run-time choice of burn backend.

use anyhow::Result;
use burn::tensor::Device;
use clap::ValueEnum;

/// Where the model runs. Backends other than `cpu` exist when the binary is built with their feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// burn's `flex` backend: pure Rust, SIMD, all cores (the fastest CPU backend measured here).
    Cpu,
    /// burn's deprecated `ndarray` backend (feature `ndarray`), kept for comparison.
    Ndarray,
    /// A GPU through wgpu: Vulkan, Metal or DX12 (feature `wgpu`).
    Wgpu,
    /// An NVIDIA GPU through CUDA (feature `cuda`).
    Cuda,
}

impl DeviceKind {
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            other => anyhow::bail!(
                "this vitrine was built without the {other:?} backend; rebuild with `--features {}`",
                format!("{other:?}").to_lowercase()
            ),
        }
    }
}
