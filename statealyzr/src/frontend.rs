//! The front end: turns C sources (or ready IR) into one linked, mem2reg'd LLVM module plus its
//! textual form, which `debuginfo` reads for the metadata the `llvm-ir` crate does not expose.
//!
//! Every input is compiled exactly as the issue prescribes (`-g -O0 -Xclang -disable-O0-optnone
//! -fno-discard-value-names -fcommon`), linked with `llvm-link`, and then `mem2reg` promotes the
//! locals whose address is never taken into SSA values. Without that promotion every local would
//! be a memory object, and memory objects are context-free in the dependence graph, which would
//! make slicing context-insensitive for all code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::Error;

/// The LLVM 14 tools the front end drives.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub clang: PathBuf,
    pub llvm_link: PathBuf,
    pub opt: PathBuf,
    pub llvm_dis: PathBuf,
}

impl Toolchain {
    /// Finds clang-14 and friends: `$STATEALYZR_LLVM_BIN` first, then the versioned names on
    /// `PATH`, then Debian's `/usr/lib/llvm-14/bin`.
    pub fn discover() -> Result<Self, Error> {
        let find = |versioned: &str, plain: &str| -> Result<PathBuf, Error> {
            if let Some(dir) = std::env::var_os("STATEALYZR_LLVM_BIN") {
                let p = Path::new(&dir).join(plain);
                if p.is_file() {
                    return Ok(p);
                }
            }
            if let Some(p) = which(versioned) {
                return Ok(p);
            }
            let deb = Path::new("/usr/lib/llvm-14/bin").join(plain);
            if deb.is_file() {
                return Ok(deb);
            }
            Err(Error::Toolchain(format!(
                "cannot find `{versioned}` (install the Debian packages clang-14 and llvm-14, \
                 or point STATEALYZR_LLVM_BIN at a directory holding `{plain}`)"
            )))
        };
        Ok(Toolchain {
            clang: find("clang-14", "clang")?,
            llvm_link: find("llvm-link-14", "llvm-link")?,
            opt: find("opt-14", "opt")?,
            llvm_dis: find("llvm-dis-14", "llvm-dis")?,
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The flags every translation unit is compiled with, after the project's own flags.
pub const IR_FLAGS: &[&str] = &[
    "-g",
    "-O0",
    "-Xclang",
    "-disable-O0-optnone",
    "-fno-discard-value-names",
    "-fcommon",
    "-emit-llvm",
    "-c",
];

/// One translation unit to compile: the file, the directory to run in, and its own flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub flags: Vec<String>,
}

/// What the user handed us, sorted into compile units and ready IR files.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    pub units: Vec<Unit>,
    pub ir: Vec<PathBuf>,
}

impl Inputs {
    /// Sorts command-line inputs by kind. `cflags` applies to the C files named directly.
    pub fn classify(paths: &[PathBuf], cflags: &[String]) -> Result<Self, Error> {
        let mut inputs = Inputs::default();
        let cwd = std::env::current_dir().map_err(|e| Error::Input {
            path: PathBuf::from("."),
            msg: format!("cannot read the current directory: {e}"),
        })?;
        for p in paths {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if p.is_dir() {
                let db = p.join("compile_commands.json");
                if db.is_file() {
                    inputs.units.extend(read_compile_commands(&db)?);
                    continue;
                }
                return Err(Error::Input {
                    path: p.clone(),
                    msg: "is a directory without a compile_commands.json".into(),
                });
            }
            if !p.is_file() {
                return Err(Error::Input {
                    path: p.clone(),
                    msg: "no such file".into(),
                });
            }
            match ext {
                "json" => inputs.units.extend(read_compile_commands(p)?),
                "bc" | "ll" => inputs.ir.push(p.clone()),
                "c" | "i" => inputs.units.push(Unit {
                    file: p.clone(),
                    dir: cwd.clone(),
                    flags: cflags.to_vec(),
                }),
                "h" => {
                    return Err(Error::Input {
                        path: p.clone(),
                        msg: "is a header; name the .c files (or a compile_commands.json) instead"
                            .into(),
                    })
                }
                _ => {
                    return Err(Error::Input {
                        path: p.clone(),
                        msg: format!(
                            "unknown input kind `{name}`: expected .c, .bc, .ll or compile_commands.json"
                        ),
                    })
                }
            }
        }
        if inputs.units.is_empty() && inputs.ir.is_empty() {
            return Err(Error::Input {
                path: PathBuf::from("-"),
                msg: "no input files".into(),
            });
        }
        Ok(inputs)
    }
}

/// Reads a compilation database (what `bear` or CMake write) and keeps, of each command, the
/// flags that change what the preprocessor and the front end see.
pub fn read_compile_commands(path: &Path) -> Result<Vec<Unit>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        msg: format!("cannot read: {e}"),
    })?;
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| Error::Input {
            path: path.to_path_buf(),
            msg: format!("not a compilation database (a JSON array of commands): {e}"),
        })?;
    let mut units = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let bad = |msg: &str| Error::Input {
            path: path.to_path_buf(),
            msg: format!("entry {i}: {msg}"),
        };
        let dir = e
            .get("directory")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("has no \"directory\""))?;
        let file = e
            .get("file")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("has no \"file\""))?;
        let args: Vec<String> = if let Some(a) = e.get("arguments").and_then(|a| a.as_array()) {
            a.iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad("non-string argument"))
                })
                .collect::<Result<_, _>>()?
        } else if let Some(c) = e.get("command").and_then(|c| c.as_str()) {
            split_command(c).ok_or_else(|| bad("unbalanced quotes in \"command\""))?
        } else {
            return Err(bad("has neither \"arguments\" nor \"command\""));
        };
        let dir = PathBuf::from(dir);
        let file_path = {
            let f = PathBuf::from(file);
            if f.is_absolute() {
                f
            } else {
                dir.join(f)
            }
        };
        let ext = file_path.extension().and_then(|x| x.to_str()).unwrap_or("");
        if !matches!(ext, "c" | "i") {
            // C++ and assembly units are outside what the analysis reads.
            continue;
        }
        units.push(Unit {
            flags: keep_flags(&args, file),
            file: file_path,
            dir,
        });
    }
    Ok(units)
}

/// Drops the compiler name, the input, outputs, optimisation, debug and dependency-file flags of
/// a recorded command; what remains (-D, -I, -std, -f..., -include, ...) is passed on.
fn keep_flags(args: &[String], file: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let a = a.as_str();
        let takes_arg = matches!(a, "-o" | "-MF" | "-MT" | "-MQ" | "-Xlinker" | "-arch");
        if takes_arg {
            it.next();
            continue;
        }
        if a == "-c"
            || a == "-S"
            || a == "-E"
            || a.starts_with("-O")
            || a.starts_with("-g")
            || a == "-MD"
            || a == "-MMD"
            || a == "-MP"
            || a == "-M"
            || a == "-MM"
            || a.starts_with("-Werror")
            || a.starts_with("-fsanitize")
            || a.starts_with("-flto")
            || a.starts_with("-Wl,")
            || a == "-pipe"
            || a == file
            || Path::new(a).file_name() == Path::new(file).file_name() && !a.starts_with('-')
        {
            continue;
        }
        out.push(a.to_string());
    }
    out
}

/// Splits a shell command line the way a POSIX shell would for plain words and quotes.
pub fn split_command(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                have = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        x => cur.push(x),
                    }
                }
            }
            '"' => {
                have = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        x => cur.push(x),
                    }
                }
            }
            '\\' => {
                have = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                have = true;
                cur.push(c);
            }
        }
    }
    if have {
        out.push(cur);
    }
    Some(out)
}

/// The linked module on disk, in both forms.
#[derive(Debug)]
pub struct Built {
    pub bc: PathBuf,
    pub ll: PathBuf,
    /// The directory each compile unit ran in, so relative debug-info paths can be resolved.
    pub units: Vec<Unit>,
}

/// Compiles, links and promotes. `work` is a scratch directory the caller owns.
pub fn build(tc: &Toolchain, inputs: &Inputs, work: &Path, jobs: usize) -> Result<Built, Error> {
    let mut parts: Vec<PathBuf> = Vec::new();
    let compiled: Mutex<Vec<(usize, Result<PathBuf, Error>)>> = Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(u) = inputs.units.get(i) else { break };
                let out = work.join(format!("u{i}.bc"));
                let r = compile(tc, u, &out).map(|_| out);
                compiled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, r));
            });
        }
    });
    let mut compiled = compiled.into_inner().unwrap_or_else(|p| p.into_inner());
    compiled.sort_by_key(|(i, _)| *i);
    let mut failures = Vec::new();
    for (_, r) in compiled {
        match r {
            Ok(p) => parts.push(p),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        return Err(if failures.len() == 1 {
            failures.remove(0)
        } else {
            Error::Many(failures)
        });
    }
    for p in &inputs.ir {
        parts.push(p.clone());
    }
    let linked = work.join("linked.bc");
    run(
        Command::new(&tc.llvm_link)
            .args(&parts)
            .arg("-o")
            .arg(&linked),
        "llvm-link",
    )
    .map_err(Error::Link)?;
    let promoted = work.join("program.bc");
    run(
        Command::new(&tc.opt)
            .arg("-passes=mem2reg")
            .arg(&linked)
            .arg("-o")
            .arg(&promoted),
        "opt -passes=mem2reg",
    )
    .map_err(Error::Link)?;
    let ll = work.join("program.ll");
    run(
        Command::new(&tc.llvm_dis).arg(&promoted).arg("-o").arg(&ll),
        "llvm-dis",
    )
    .map_err(Error::Link)?;
    Ok(Built {
        bc: promoted,
        ll,
        units: inputs.units.clone(),
    })
}

fn compile(tc: &Toolchain, u: &Unit, out: &Path) -> Result<(), Error> {
    let mut cmd = Command::new(&tc.clang);
    cmd.current_dir(&u.dir)
        .args(&u.flags)
        .args(IR_FLAGS)
        .arg(&u.file)
        .arg("-o")
        .arg(out);
    let o = cmd
        .output()
        .map_err(|e| Error::Toolchain(format!("cannot run clang: {e}")))?;
    if !o.status.success() {
        return Err(Error::Compile {
            file: u.file.clone(),
            diagnostics: first_errors(&String::from_utf8_lossy(&o.stderr)),
        });
    }
    Ok(())
}

/// Keeps the lines of a compiler's stderr that say what is wrong, capped so one broken header
/// does not bury the message.
fn first_errors(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let errs: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("error:") || l.contains("fatal error"))
        .take(10)
        .collect();
    if errs.is_empty() {
        lines
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        errs.join("\n")
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            first_errors(&String::from_utf8_lossy(&o.stderr))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_command_handles_quotes() {
        let v = split_command(r#"cc -DX="a b" -I'inc dir' -c f.c"#).unwrap();
        assert_eq!(v, vec!["cc", "-DX=a b", "-Iinc dir", "-c", "f.c"]);
        assert!(split_command("cc 'open").is_none());
    }

    #[test]
    fn keep_flags_drops_outputs_and_optimisation() {
        let args: Vec<String> = "gcc -O2 -g -DFOO -Iinc -MD -MF x.d -c src/a.c -o a.o -std=gnu99"
            .split(' ')
            .map(String::from)
            .collect();
        assert_eq!(
            keep_flags(&args, "src/a.c"),
            vec!["-DFOO", "-Iinc", "-std=gnu99"]
        );
    }
}
