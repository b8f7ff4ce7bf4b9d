//! Finds the distribution's DPDK 22.11 with pkg-config, generates bindings with bindgen and
//! compiles the C shim. When DPDK (or libclang for bindgen) is missing, the crate still builds:
//! the build prints why the DPDK backend is off and leaves the `chc_dpdk` cfg unset, so this
//! crate exports no bindings and `chc-dpdk` compiles to stubs that return an error.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The DPDK release line the bindings and the safe wrapper are written against.
const MIN_VERSION: &str = "22.11";
const MAX_VERSION: &str = "22.11.99";

/// Driver libraries whose exported functions the bindings use (`rte_vdev_init` to hot-plug a
/// virtual device, `rte_eth_from_rings` to make a port out of rings). They are not in
/// `pkg-config --libs libdpdk`, which names only the core libraries. Every other driver
/// (net_pcap, net_tap, PCI NICs, the ring mempool) registers when the shared EAL loads its
/// plugin directory at start-up; `chc-dpdk` checks that it did.
const DRIVER_LIBS: &[&str] = &["rte_bus_vdev", "rte_net_ring"];

struct Dpdk {
    version: String,
    cflags: Vec<String>,
    libdir: PathBuf,
    libs: Vec<String>,
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(chc_dpdk)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=shim/shim.h");
    println!("cargo::rerun-if-changed=shim/shim.c");
    for var in [
        "CHC_DPDK_DISABLE",
        "PKG_CONFIG",
        "PKG_CONFIG_PATH",
        "PKG_CONFIG_LIBDIR",
        "LIBCLANG_PATH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    match enable() {
        Ok(status) => {
            println!("cargo::rustc-cfg=chc_dpdk");
            println!("cargo::metadata=enabled=1");
            println!("cargo::rustc-env=CHC_DPDK_STATUS={status}");
        }
        Err(why) => {
            println!(
                "cargo::warning=DPDK backend is off: {why}; chc-dpdk builds as stubs whose \
                 functions return an error"
            );
            println!("cargo::metadata=enabled=0");
            println!("cargo::rustc-env=CHC_DPDK_STATUS=off: {why}");
        }
    }
}

/// Turns the backend on, or says why it cannot be.
fn enable() -> Result<String, String> {
    if env::var_os("CHC_DPDK_DISABLE").is_some_and(|v| !v.is_empty() && v != "0") {
        return Err("CHC_DPDK_DISABLE is set".into());
    }
    let dpdk = probe()?;
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    generate_bindings(&dpdk, &out)?;
    compile_shim(&dpdk);
    link(&dpdk);
    let pmd_dir = find_pmd_dir(&dpdk.libdir);
    if let Some(dir) = &pmd_dir {
        println!("cargo::rustc-env=CHC_DPDK_PMD_DIR={}", dir.display());
    } else {
        println!("cargo::rustc-env=CHC_DPDK_PMD_DIR=");
    }
    Ok(format!(
        "on: DPDK {} from {}",
        dpdk.version,
        dpdk.libdir.display()
    ))
}

/// Why pkg-config gave no answer: it could not run at all, or it ran and said no.
enum PkgConfigError {
    NotRunnable(String),
    Failed(String),
}

fn pkg_config(args: &[&str]) -> Result<String, PkgConfigError> {
    let bin = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(&bin).args(args).output().map_err(|e| {
        PkgConfigError::NotRunnable(format!("cannot run {bin} ({e}); install pkg-config"))
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(PkgConfigError::Failed(err));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn query(args: &[&str]) -> Result<String, String> {
    pkg_config(args).map_err(|e| match e {
        PkgConfigError::NotRunnable(why) | PkgConfigError::Failed(why) => why,
    })
}

fn probe() -> Result<Dpdk, String> {
    let version = pkg_config(&["--modversion", "libdpdk"]).map_err(|e| match e {
        PkgConfigError::NotRunnable(why) => why,
        PkgConfigError::Failed(_) => "pkg-config does not find libdpdk; install libdpdk-dev".into(),
    })?;
    query(&[
        &format!("--atleast-version={MIN_VERSION}"),
        &format!("--max-version={MAX_VERSION}"),
        "libdpdk",
    ])
    .map_err(|_| format!("found DPDK {version}, but the bindings need {MIN_VERSION}.x"))?;
    let cflags = query(&["--cflags", "libdpdk"])?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let libdir = PathBuf::from(query(&["--variable=libdir", "libdpdk"])?);
    let libs = query(&["--libs-only-l", "libdpdk"])?
        .split_whitespace()
        .filter_map(|l| l.strip_prefix("-l").map(str::to_string))
        .collect();
    Ok(Dpdk {
        version,
        cflags,
        libdir,
        libs,
    })
}

fn generate_bindings(dpdk: &Dpdk, out: &Path) -> Result<(), String> {
    // Generate code for the workspace's minimum Rust version, not the newest one.
    let target = bindgen::RustTarget::stable(80, 0).map_err(|e| e.to_string())?;
    let builder = bindgen::Builder::default()
        .rust_target(target)
        .header("shim/shim.h")
        .clang_args(&dpdk.cflags)
        .allowlist_function("rte_.*")
        .allowlist_function("chc_rte_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*")
        .allowlist_var("RING_F_.*")
        .allowlist_var("LCORE_ID_ANY")
        .allowlist_var("SOCKET_ID_ANY")
        // Functions with va_list parameters have no portable Rust signature.
        .blocklist_function("rte_vlog")
        .blocklist_function(".*_vprintf")
        // A packed struct holding a union whose members carry an alignment attribute: Rust
        // cannot nest `#[repr(align)]` inside `#[repr(packed)]`, so it becomes an opaque blob
        // of the right size (nothing on our side reads its fields). Every other struct is laid
        // out field by field, and bindgen's compile-time layout assertions check each against
        // clang's layout (size, alignment, every field offset).
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    // bindgen panics when it cannot load libclang; turn that into "backend off".
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()))
            .map_err(|_| "bindgen could not load libclang (install libclang-14-dev)".to_string())?
            .map_err(|e| format!("bindgen failed on the DPDK headers: {e}"))?;
    generated
        .write_to_file(out.join("bindings.rs"))
        .map_err(|e| format!("cannot write bindings: {e}"))
}

fn compile_shim(dpdk: &Dpdk) {
    let mut build = cc::Build::new();
    build.file("shim/shim.c").opt_level(3).warnings(true);
    let mut flags = dpdk.cflags.iter();
    while let Some(flag) = flags.next() {
        if flag == "-include" {
            if let Some(file) = flags.next() {
                build.flag("-include").flag(file);
            }
        } else {
            build.flag(flag);
        }
    }
    build.compile("chc_dpdk_shim");
}

fn link(dpdk: &Dpdk) {
    println!("cargo::rustc-link-search=native={}", dpdk.libdir.display());
    for lib in &dpdk.libs {
        println!("cargo::rustc-link-lib=dylib={lib}");
    }
    for lib in DRIVER_LIBS {
        println!("cargo::rustc-link-lib=dylib={lib}");
    }
}

/// The directory the shared EAL loads its drivers from (Debian: `<libdir>/dpdk/pmds-<abi>`).
fn find_pmd_dir(libdir: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(libdir.join("dpdk"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("pmds-"))
        })
        .collect();
    dirs.sort();
    dirs.pop()
}
