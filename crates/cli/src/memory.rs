//! How the process keeps memory between tensors.

/// Keep freed tensor buffers in the process for the tensors that follow. glibc hands every buffer
/// above its mmap threshold back to the kernel when it is freed, so the next tensor of that size
/// page-faults and the kernel clears each page again: about 8 % of a training step at batch 8
/// (`vitrine bench --train`, DINOv2-S/14). Buffers up to 1 GiB now come from the heap, and the heap
/// is not trimmed below that.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called once, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
