//! iron-governor: Iron for hosts whose kernel does not carry the Iron patch, and the driver of
//! the patch's interface where it does.
//!
//! * [`config`]: the TOML configuration (containers by cgroup path, quotas, devices, queues).
//! * [`cgroup`]: quotas on cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`).
//! * [`measure`]: network softirq time from `/proc`, apportioned by packets.
//! * [`enforce`]: tc drop gates, NIC queue steering (behind a trait), threaded-NAPI kthreads.
//! * [`governor`]: the period loop and the guarantee that nothing stays throttled on exit.
//! * [`sys`]: every side effect, so `--dry-run` prints instead of acting.

#[cfg(feature = "bpf")]
pub mod bpf;
pub mod cgroup;
pub mod config;
pub mod enforce;
pub mod governor;
pub mod measure;
pub mod sys;
