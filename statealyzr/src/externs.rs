//! What functions without a body do: the C library, libpcap, pthreads, sockets and the LLVM
//! intrinsics. The pointer analysis, the dependence graph and the receive/output classification
//! all read the same model, so a function is never "pure" for one analysis and "writing" for
//! another.
//!
//! A function the table does not know is modelled conservatively: it may read and write
//! everything reachable from its pointer arguments, may return any of them or library memory,
//! and may call any function pointer it is given.

/// A set of argument positions: the bits of `mask`, plus every position `>= from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSet {
    pub mask: u32,
    pub from: u8,
}

impl ArgSet {
    pub const NONE: ArgSet = ArgSet {
        mask: 0,
        from: u8::MAX,
    };
    pub const ALL: ArgSet = ArgSet { mask: 0, from: 0 };
    pub const fn of(list: &[u8]) -> ArgSet {
        let mut mask = 0u32;
        let mut i = 0;
        while i < list.len() {
            mask |= 1 << list[i];
            i += 1;
        }
        ArgSet {
            mask,
            from: u8::MAX,
        }
    }
    pub const fn from(k: u8) -> ArgSet {
        ArgSet { mask: 0, from: k }
    }
    pub const fn with_from(self, k: u8) -> ArgSet {
        ArgSet {
            mask: self.mask,
            from: k,
        }
    }
    pub fn contains(&self, i: usize) -> bool {
        (i < 32 && self.mask & (1 << i) != 0) || i >= self.from as usize
    }
    pub fn is_empty(&self) -> bool {
        self.mask == 0 && self.from == u8::MAX
    }
}

/// What a returned value may point to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetKind {
    /// Returns no pointer (or an integer with no provenance).
    Nothing,
    /// A new heap object per call site.
    Fresh,
    /// A new heap object, or the object of argument 0 (realloc).
    FreshOrArg0,
    /// Library-owned static memory (getenv, strerror, ...).
    Library,
    /// Whatever these arguments point to (strchr, memcpy's return, ...).
    FromArgs(ArgSet),
    /// The packet buffer a receive call hands out.
    Packet,
    SocketFd,
    FileFd,
    /// Unknown function: library memory or any argument.
    Unknown,
}

/// An object a call stores the address of into `*arg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    PktHdr,
    Packet,
    Fresh,
    /// What argument `i` points to.
    ArgPts(u8),
    SocketFd,
    FileFd,
}

/// How a receive function delivers the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// `pcap_next(p, &hdr)`: returns the packet, fills `*hdr`.
    PcapNext,
    /// `pcap_next_ex(p, &hdrp, &datap)`: stores pointers to header and packet.
    PcapNextEx,
    /// `pcap_loop/pcap_dispatch(p, n, cb, user)`: calls `cb(user, hdr, pkt)` per packet.
    PcapLoop,
    /// `recv(fd, buf, ...)`-like: writes the packet into the pointees of these arguments.
    Buffers(ArgSet),
    /// `read(fd, buf, n)`: a receive only when `fd` may be a socket.
    FdRead,
    /// A user-named receive function (`--recv-fn`): its result and pointer arguments carry
    /// packet data.
    User,
}

/// What kind of output a call produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Packet,
    Log,
    /// `write`/`writev`/`dprintf` on a descriptor: packet output on a socket, log output on a file.
    ByFd,
}

/// A function pointer argument the callee will invoke, and what it passes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    /// Argument holding the function pointer.
    pub fn_arg: u8,
    /// The function pointer is a field of the struct `fn_arg` points to (sigaction).
    pub in_pointee: bool,
    pub params: Vec<ParamSrc>,
    pub kind: SpawnKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamSrc {
    Arg(u8),
    PktHdr,
    Packet,
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnKind {
    /// Runs concurrently with the caller from now on (pthread_create).
    Thread,
    /// Runs asynchronously whenever a signal arrives.
    Signal,
    /// Runs once per received packet (pcap_loop).
    PerPacket,
    /// Called back synchronously (qsort comparators, unknown libraries).
    Sync,
    /// Runs at exit.
    AtExit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub known: bool,
    pub ret: RetKind,
    /// Arguments whose pointees the call reads.
    pub reads: ArgSet,
    /// Arguments whose pointees the call writes.
    pub writes: ArgSet,
    /// Reads and writes extend to everything reachable from the pointer arguments.
    pub deep: bool,
    pub stores: Vec<(u8, Stored)>,
    /// `*dst` receives the contents of `*src` (memcpy).
    pub copies: Vec<(u8, u8)>,
    pub recv: Option<Recv>,
    pub output: Option<Output>,
    /// Arguments that produce the output (the buffer, the format and its values).
    pub output_args: ArgSet,
    pub spawn: Option<Spawn>,
    pub va_start: bool,
    pub va_copy: bool,
    /// The call frees the object argument 0 points to.
    pub frees: bool,
    /// Never returns (exit, abort): ends the packet loop's path.
    pub noreturn: bool,
}

impl Model {
    fn pure() -> Model {
        Model {
            known: true,
            ret: RetKind::Nothing,
            reads: ArgSet::NONE,
            writes: ArgSet::NONE,
            deep: false,
            stores: vec![],
            copies: vec![],
            recv: None,
            output: None,
            output_args: ArgSet::NONE,
            spawn: None,
            va_start: false,
            va_copy: false,
            frees: false,
            noreturn: false,
        }
    }
    fn reads(mut self, a: ArgSet) -> Self {
        self.reads = a;
        self
    }
    fn writes(mut self, a: ArgSet) -> Self {
        self.writes = a;
        self
    }
    fn ret(mut self, r: RetKind) -> Self {
        self.ret = r;
        self
    }
    fn store(mut self, arg: u8, s: Stored) -> Self {
        self.stores.push((arg, s));
        self
    }
    fn copy(mut self, dst: u8, src: u8) -> Self {
        self.copies.push((dst, src));
        self
    }
    fn out(mut self, o: Output, args: ArgSet) -> Self {
        self.output = Some(o);
        self.output_args = args;
        self
    }
    fn spawn(mut self, fn_arg: u8, params: Vec<ParamSrc>, kind: SpawnKind) -> Self {
        self.spawn = Some(Spawn {
            fn_arg,
            in_pointee: false,
            params,
            kind,
        });
        self
    }

    /// The conservative model for a function nothing is known about.
    pub fn unknown() -> Model {
        Model {
            known: false,
            ret: RetKind::Unknown,
            reads: ArgSet::ALL,
            writes: ArgSet::ALL,
            deep: true,
            ..Model::pure()
        }
    }

    /// The model for a `--recv-fn` function without a body.
    pub fn user_recv() -> Model {
        Model {
            recv: Some(Recv::User),
            ret: RetKind::Packet,
            reads: ArgSet::ALL,
            writes: ArgSet::ALL,
            ..Model::pure()
        }
    }
}

const A0: ArgSet = ArgSet::of(&[0]);
const A1: ArgSet = ArgSet::of(&[1]);
const A2: ArgSet = ArgSet::of(&[2]);

/// The model of a function without a body, by name.
pub fn model(name: &str) -> Model {
    use RetKind as R;
    let p = Model::pure;
    // Fortified and versioned spellings behave as the plain function.
    let base = name
        .strip_prefix("__")
        .and_then(|n| n.strip_suffix("_chk"))
        .unwrap_or(name);
    let base = base
        .strip_suffix("64")
        .filter(|b| !b.is_empty())
        .unwrap_or(base);
    let base = base.strip_suffix("_unlocked").unwrap_or(base);
    if let Some(m) = intrinsic(base) {
        return m;
    }
    match base {
        // ---- receive ----
        // Fills the caller's `struct pcap_pkthdr` (a copy, no pointer is stored).
        "pcap_next" => p().ret(R::Packet).writes(A1).recv_as(Recv::PcapNext),
        "pcap_next_ex" => p()
            .writes(ArgSet::of(&[1, 2]))
            .store(1, Stored::PktHdr)
            .store(2, Stored::Packet)
            .recv_as(Recv::PcapNextEx),
        "pcap_loop" | "pcap_dispatch" => p()
            .spawn(
                2,
                vec![ParamSrc::Arg(3), ParamSrc::PktHdr, ParamSrc::Packet],
                SpawnKind::PerPacket,
            )
            .recv_as(Recv::PcapLoop),
        "recv" => p().writes(A1).recv_as(Recv::Buffers(A1)),
        "recvfrom" => p()
            .writes(ArgSet::of(&[1, 4, 5]))
            .recv_as(Recv::Buffers(ArgSet::of(&[1, 4]))),
        "recvmsg" => Model {
            deep: true,
            ..p().writes(A1).reads(A1).recv_as(Recv::Buffers(A1))
        },
        "recvmmsg" => Model {
            deep: true,
            ..p().writes(A1).reads(A1).recv_as(Recv::Buffers(A1))
        },
        "read" => p().writes(A1).recv_as(Recv::FdRead),
        "readv" => Model {
            deep: true,
            ..p().writes(A1).reads(A1).recv_as(Recv::FdRead)
        },
        // ---- packet output ----
        "pcap_inject" | "pcap_sendpacket" => p().reads(A1).out(Output::Packet, ArgSet::of(&[1, 2])),
        "pcap_dump" => p()
            .reads(ArgSet::of(&[1, 2]))
            .out(Output::Packet, ArgSet::of(&[1, 2])),
        "send" => p().reads(A1).out(Output::Packet, ArgSet::of(&[1, 2])),
        "sendto" => p()
            .reads(ArgSet::of(&[1, 4]))
            .out(Output::Packet, ArgSet::of(&[1, 2, 4])),
        "sendmsg" | "sendmmsg" => Model {
            deep: true,
            ..p().reads(A1).out(Output::Packet, A1)
        },
        "write" | "pwrite" => p().reads(A1).out(Output::ByFd, ArgSet::of(&[1, 2])),
        "writev" | "pwritev" => Model {
            deep: true,
            ..p().reads(A1).out(Output::ByFd, A1)
        },
        "dprintf" => p()
            .reads(ArgSet::from(1))
            .out(Output::ByFd, ArgSet::from(1)),
        "vdprintf" => Model {
            deep: true,
            ..p()
                .reads(ArgSet::from(1))
                .out(Output::ByFd, ArgSet::from(1))
        },
        // ---- log output ----
        "printf" | "puts" => p().reads(ArgSet::ALL).out(Output::Log, ArgSet::ALL),
        "putchar" => p().out(Output::Log, ArgSet::ALL),
        "fprintf" | "fputs" | "fputc" | "putc" | "fputws" => {
            p().reads(ArgSet::ALL).out(Output::Log, ArgSet::ALL)
        }
        "vprintf" | "vfprintf" | "vsyslog" => Model {
            deep: true,
            ..p().reads(ArgSet::ALL).out(Output::Log, ArgSet::ALL)
        },
        "fwrite" => p().reads(A0).out(Output::Log, ArgSet::of(&[0, 1, 2])),
        "syslog" => p().reads(ArgSet::from(1)).out(Output::Log, ArgSet::ALL),
        "perror" | "psignal" => p().reads(A0).out(Output::Log, A0),
        "pcap_perror" => p().reads(A1).out(Output::Log, A1),
        // ---- allocation ----
        "malloc" | "calloc" | "valloc" | "pvalloc" | "aligned_alloc" | "memalign" | "mmap"
        | "alloca" | "xmalloc" | "xcalloc" => p().ret(R::Fresh),
        "realloc" | "reallocarray" | "xrealloc" => p().ret(R::FreshOrArg0).reads(A0),
        "posix_memalign" => p().writes(A0).store(0, Stored::Fresh),
        "strdup" | "strndup" | "xstrdup" => p().ret(R::Fresh).reads(A0),
        "free" | "munmap" | "cfree" => Model {
            frees: true,
            ..p().writes(A0)
        },
        "getline" | "getdelim" => p()
            .writes(ArgSet::of(&[0, 1]))
            .reads(ArgSet::of(&[0, 3]))
            .store(0, Stored::Fresh),
        "getaddrinfo" => p()
            .reads(ArgSet::of(&[0, 1, 2]))
            .writes(ArgSet::of(&[3]))
            .store(3, Stored::Fresh),
        "freeaddrinfo" | "globfree" | "regfree" => Model {
            frees: true,
            deep: true,
            ..p().writes(A0)
        },
        "asprintf" | "vasprintf" => p()
            .writes(A0)
            .reads(ArgSet::from(1))
            .store(0, Stored::Fresh),
        // ---- files and descriptors ----
        "fopen" | "fdopen" | "tmpfile" | "freopen" | "popen" | "opendir" | "fdopendir" => {
            p().ret(R::Fresh).reads(ArgSet::of(&[0, 1]))
        }
        "fclose" | "pclose" | "closedir" => Model {
            frees: true,
            ..p().writes(A0)
        },
        "open" | "openat" | "creat" | "fileno" | "dup" | "dup2" | "dup3" | "mkstemp"
        | "eventfd" | "timerfd_create" | "epoll_create" | "epoll_create1" | "inotify_init"
        | "memfd_create" => p().ret(R::FileFd).reads(ArgSet::of(&[0, 1])),
        "socket" | "accept" | "accept4" | "pcap_fileno" | "pcap_get_selectable_fd" => {
            p().ret(R::SocketFd).writes(ArgSet::of(&[1, 2]))
        }
        "socketpair" => p().writes(A2.with_from(3)).store(3, Stored::SocketFd),
        "pipe" | "pipe2" => p().writes(A0).store(0, Stored::FileFd),
        "close" | "shutdown" | "listen" | "fsync" | "fdatasync" | "lseek" | "ftruncate"
        | "unlink" | "remove" | "rename" | "mkdir" | "rmdir" | "chdir" | "chmod" | "chown"
        | "access" | "umask" | "isatty" | "fflush" | "fseek" | "fseeko" | "ftell" | "ftello"
        | "rewind" | "feof" | "ferror" | "clearerr" | "setvbuf" | "setbuf" | "setlinebuf"
        | "sync" | "flock" | "lockf" => p().reads(ArgSet::ALL),
        "bind" | "connect" | "setsockopt" | "sendfile" => p().reads(ArgSet::ALL),
        "getsockopt" => p().writes(ArgSet::of(&[3, 4])),
        "getsockname" | "getpeername" => p().writes(ArgSet::of(&[1, 2])),
        "fcntl" | "ioctl" => p().writes(ArgSet::from(2)).reads(ArgSet::from(2)),
        "select" | "pselect" => p()
            .writes(ArgSet::of(&[1, 2, 3, 4]))
            .reads(ArgSet::of(&[1, 2, 3, 4])),
        "poll" | "ppoll" => p().writes(A0).reads(A0),
        "epoll_ctl" => p().reads(ArgSet::of(&[3])),
        "epoll_wait" | "epoll_pwait" => p().writes(A1),
        "stat" | "fstat" | "lstat" | "fstatat" | "statfs" | "fstatfs" => {
            p().reads(A0).writes(ArgSet::from(1))
        }
        "readdir" => p().ret(R::Library).reads(A0),
        "fread" => p().writes(A0),
        "fgets" => p().writes(A0).ret(R::FromArgs(A0)),
        "fgetc" | "getc" | "getchar" | "ungetc" => p(),
        "fscanf" | "vfscanf" => p().reads(ArgSet::of(&[0, 1])).writes(ArgSet::from(2)),
        "scanf" | "vscanf" => p().reads(A0).writes(ArgSet::from(1)),
        "sscanf" | "vsscanf" => p().reads(ArgSet::of(&[0, 1])).writes(ArgSet::from(2)),
        "readlink" => p().reads(A0).writes(A1),
        "getcwd" => p().writes(A0).ret(R::FromArgs(A0)),
        "realpath" => p().reads(A0).writes(A1).ret(R::FromArgs(A1)),
        // ---- strings and memory ----
        "memcpy" | "memmove" | "bcopy" | "mempcpy" => {
            let (d, s) = if base == "bcopy" { (1, 0) } else { (0, 1) };
            p().reads(ArgSet::of(&[s]))
                .writes(ArgSet::of(&[d]))
                .copy(d, s)
                .ret(R::FromArgs(ArgSet::of(&[d])))
        }
        "memset" | "bzero" | "explicit_bzero" => p().writes(A0).ret(R::FromArgs(A0)),
        "strcpy" | "strncpy" | "stpcpy" | "stpncpy" | "strcat" | "strncat" | "strlcpy"
        | "strlcat" => p()
            .reads(ArgSet::of(&[0, 1]))
            .writes(A0)
            .ret(R::FromArgs(A0)),
        "strchr" | "strrchr" | "strstr" | "strcasestr" | "strpbrk" | "memchr" | "memrchr"
        | "rawmemchr" | "index" | "rindex" | "strchrnul" | "basename" | "dirname" | "memmem" => {
            p().reads(ArgSet::ALL).ret(R::FromArgs(A0))
        }
        "strtok" => p().reads(ArgSet::ALL).writes(A0).ret(R::FromArgs(A0)),
        "strtok_r" | "strsep" => p()
            .reads(ArgSet::ALL)
            .writes(ArgSet::of(&[0, 2]))
            .store(2, Stored::ArgPts(0))
            .store(0, Stored::ArgPts(0))
            .ret(R::FromArgs(A0)),
        "strtol" | "strtoul" | "strtoll" | "strtoull" | "strtod" | "strtof" | "strtold"
        | "strtoimax" | "strtoumax" => p().reads(A0).writes(A1).store(1, Stored::ArgPts(0)),
        "strlen" | "strnlen" | "strcmp" | "strncmp" | "strcasecmp" | "strncasecmp" | "memcmp"
        | "bcmp" | "strcoll" | "strspn" | "strcspn" | "atoi" | "atol" | "atoll" | "atof"
        | "inet_addr" | "inet_network" | "wcslen" | "fnmatch" => p().reads(ArgSet::ALL),
        "sprintf" | "snprintf" => p().writes(A0).reads(ArgSet::from(1)),
        "vsprintf" | "vsnprintf" => Model {
            deep: true,
            ..p().writes(A0).reads(ArgSet::from(1))
        },
        "inet_ntop" => p().reads(A1).writes(A2).ret(R::FromArgs(A2)),
        "inet_pton" => p().reads(A1).writes(A2),
        "inet_aton" => p().reads(A0).writes(A1),
        "inet_ntoa"
        | "strerror"
        | "getenv"
        | "secure_getenv"
        | "ctime"
        | "asctime"
        | "localtime"
        | "gmtime"
        | "getpwnam"
        | "getpwuid"
        | "getgrnam"
        | "getgrgid"
        | "gethostbyname"
        | "gethostbyaddr"
        | "getservbyname"
        | "getservbyport"
        | "getprotobyname"
        | "getprotobynumber"
        | "__errno_location"
        | "__ctype_b_loc"
        | "__ctype_tolower_loc"
        | "__ctype_toupper_loc"
        | "pcap_geterr"
        | "pcap_lib_version"
        | "pcap_strerror"
        | "pcap_datalink_val_to_name"
        | "pcap_lookupdev"
        | "gai_strerror"
        | "strsignal"
        | "setlocale"
        | "ttyname"
        | "getlogin"
        | "if_indextoname" => p().ret(R::Library).reads(ArgSet::ALL),
        "localtime_r" | "gmtime_r" | "ctime_r" | "asctime_r" => {
            p().reads(A0).writes(A1).ret(R::FromArgs(A1))
        }
        "strftime" => p().writes(A0).reads(ArgSet::from(2)),
        "qsort" => p().reads(A0).writes(A0).spawn(
            3,
            vec![ParamSrc::Arg(0), ParamSrc::Arg(0)],
            SpawnKind::Sync,
        ),
        "bsearch" => p().reads(ArgSet::of(&[0, 1])).ret(R::FromArgs(A1)).spawn(
            4,
            vec![ParamSrc::Arg(0), ParamSrc::Arg(1)],
            SpawnKind::Sync,
        ),
        "regcomp" => p().reads(A1).writes(A0),
        "regexec" => p().reads(ArgSet::of(&[0, 1])).writes(ArgSet::of(&[3])),
        // ---- time, process, misc ----
        "time" => p().writes(A0),
        "gettimeofday" | "clock_gettime" | "getrusage" | "times" | "uname" | "sysinfo"
        | "getrlimit" => p().writes(ArgSet::of(&[0, 1])),
        "setrlimit" | "nanosleep" | "clock_nanosleep" => p().reads(ArgSet::ALL),
        "difftime"
        | "mktime"
        | "clock"
        | "rand"
        | "random"
        | "srand"
        | "srandom"
        | "sleep"
        | "usleep"
        | "alarm"
        | "getpid"
        | "getppid"
        | "getuid"
        | "geteuid"
        | "getgid"
        | "getegid"
        | "setuid"
        | "setgid"
        | "seteuid"
        | "setegid"
        | "setsid"
        | "fork"
        | "abs"
        | "labs"
        | "llabs"
        | "ntohs"
        | "htons"
        | "ntohl"
        | "htonl"
        | "toupper"
        | "tolower"
        | "isalpha"
        | "isdigit"
        | "isspace"
        | "isalnum"
        | "isprint"
        | "isxdigit"
        | "isupper"
        | "islower"
        | "ispunct"
        | "iscntrl"
        | "pause"
        | "sched_yield"
        | "sysconf"
        | "kill"
        | "raise"
        | "wait"
        | "sqrt"
        | "pow"
        | "log"
        | "exp"
        | "floor"
        | "ceil"
        | "fabs"
        | "if_nametoindex"
        | "getopt_long_only"
        | "daemon"
        | "nice"
        | "getpagesize"
        | "pcap_datalink"
        | "pcap_snapshot"
        | "pcap_breakloop"
        | "pcap_activate"
        | "pcap_set_snaplen"
        | "pcap_set_promisc"
        | "pcap_set_timeout"
        | "pcap_set_buffer_size"
        | "pcap_set_immediate_mode"
        | "pcap_setnonblock"
        | "pcap_setdirection"
        | "pcap_set_datalink"
        | "pcap_dump_flush"
        | "pcap_major_version"
        | "pcap_minor_version"
        | "pcap_is_swapped"
        | "pcap_set_rfmon"
        | "pcap_can_set_rfmon" => p().reads(ArgSet::ALL),
        "waitpid" | "wait3" | "wait4" => p().writes(A1),
        "getopt" | "getopt_long" => p().reads(ArgSet::ALL).writes(ArgSet::from(3)),
        "exit" | "_exit" | "_Exit" | "abort" | "pthread_exit" | "__assert_fail" | "err"
        | "errx" | "verr" | "verrx" | "longjmp" | "siglongjmp" | "quick_exit" => Model {
            noreturn: true,
            ..p().reads(ArgSet::ALL)
        },
        "setjmp" | "_setjmp" | "sigsetjmp" => p().writes(A0),
        "srand48" | "drand48" | "lrand48" | "mrand48" => p(),
        "rand_r" => p().writes(A0),
        "execv" | "execvp" | "execl" | "execlp" | "execve" | "system" => p().reads(ArgSet::ALL),
        "signal" | "sysv_signal" | "bsd_signal" => {
            p().ret(R::Nothing)
                .spawn(1, vec![ParamSrc::Nothing], SpawnKind::Signal)
        }
        "sigaction" => {
            let mut m = p().reads(A1).writes(A2);
            m.spawn = Some(Spawn {
                fn_arg: 1,
                in_pointee: true,
                params: vec![ParamSrc::Nothing, ParamSrc::Nothing, ParamSrc::Nothing],
                kind: SpawnKind::Signal,
            });
            m
        }
        "sigemptyset" | "sigfillset" | "sigaddset" | "sigdelset" => p().writes(A0),
        "sigismember" => p().reads(A0),
        "sigprocmask" | "pthread_sigmask" => p().reads(A1).writes(A2),
        "sigwait" => p().reads(A0).writes(A1),
        "atexit" => p().spawn(0, vec![], SpawnKind::AtExit),
        "on_exit" => p().spawn(
            0,
            vec![ParamSrc::Nothing, ParamSrc::Arg(1)],
            SpawnKind::AtExit,
        ),
        // ---- threads ----
        "pthread_create" => p()
            .writes(A0)
            .spawn(2, vec![ParamSrc::Arg(3)], SpawnKind::Thread),
        "pthread_once" => p().spawn(1, vec![], SpawnKind::Sync),
        "pthread_join" => p().writes(A1),
        "pthread_self"
        | "pthread_detach"
        | "pthread_cancel"
        | "pthread_setcanceltype"
        | "pthread_setcancelstate"
        | "pthread_testcancel"
        | "pthread_kill"
        | "pthread_equal"
        | "pthread_attr_init"
        | "pthread_attr_destroy"
        | "pthread_attr_setdetachstate"
        | "pthread_attr_setstacksize"
        | "pthread_setname_np"
        | "pthread_setaffinity_np" => p(),
        // Lock and condition words are synchronisation, not middlebox state.
        "pthread_mutex_lock"
        | "pthread_mutex_unlock"
        | "pthread_mutex_trylock"
        | "pthread_mutex_init"
        | "pthread_mutex_destroy"
        | "pthread_cond_wait"
        | "pthread_cond_timedwait"
        | "pthread_cond_signal"
        | "pthread_cond_broadcast"
        | "pthread_cond_init"
        | "pthread_cond_destroy"
        | "pthread_rwlock_rdlock"
        | "pthread_rwlock_wrlock"
        | "pthread_rwlock_unlock"
        | "pthread_rwlock_init"
        | "pthread_spin_lock"
        | "pthread_spin_unlock"
        | "pthread_spin_init"
        | "sem_init"
        | "sem_wait"
        | "sem_post"
        | "sem_trywait"
        | "sem_destroy"
        | "sem_timedwait"
        | "pthread_mutexattr_init"
        | "pthread_mutexattr_settype"
        | "pthread_condattr_init" => p(),
        "pthread_key_create" => p().writes(A0),
        "pthread_setspecific" => p(),
        "pthread_getspecific" => p().ret(R::Library),
        // ---- libpcap set-up ----
        "pcap_open_live"
        | "pcap_open_offline"
        | "pcap_create"
        | "pcap_open_dead"
        | "pcap_fopen_offline"
        | "pcap_open_offline_with_tstamp_precision"
        | "pcap_open_dead_with_tstamp_precision"
        | "pcap_dump_open"
        | "pcap_dump_fopen" => p().ret(R::Fresh).reads(ArgSet::ALL).writes(ArgSet::from(1)),
        "pcap_close" | "pcap_dump_close" | "pcap_freecode" => Model {
            frees: true,
            ..p().writes(A0)
        },
        "pcap_compile" => p().reads(ArgSet::of(&[0, 2])).writes(A1),
        "pcap_setfilter" | "pcap_offline_filter" => p().reads(ArgSet::ALL),
        "pcap_stats" => p().writes(A1),
        "pcap_findalldevs" => p().writes(ArgSet::of(&[0, 1])).store(0, Stored::Fresh),
        "pcap_freealldevs" => Model {
            frees: true,
            deep: true,
            ..p().writes(A0)
        },
        "pcap_lookupnet" => p().reads(A0).writes(ArgSet::from(1)),
        // libevent: the handler runs from the event loop whenever the descriptor is ready.
        "event_set" => p().writes(A0).spawn(
            3,
            vec![ParamSrc::Arg(1), ParamSrc::Nothing, ParamSrc::Arg(4)],
            SpawnKind::Sync,
        ),
        "event_assign" => p().writes(A0).spawn(
            4,
            vec![ParamSrc::Arg(2), ParamSrc::Nothing, ParamSrc::Arg(5)],
            SpawnKind::Sync,
        ),
        "event_new" => p().ret(R::Fresh).spawn(
            3,
            vec![ParamSrc::Arg(1), ParamSrc::Nothing, ParamSrc::Arg(4)],
            SpawnKind::Sync,
        ),
        _ => Model::unknown(),
    }
}

impl Model {
    fn recv_as(mut self, r: Recv) -> Self {
        self.recv = Some(r);
        self
    }
}

/// LLVM intrinsics: only the memory ones have effects.
fn intrinsic(name: &str) -> Option<Model> {
    let n = name.strip_prefix("llvm.")?;
    let p = Model::pure;
    Some(if n.starts_with("memcpy") || n.starts_with("memmove") {
        p().reads(A1).writes(A0).copy(0, 1)
    } else if n.starts_with("memset") {
        p().writes(A0)
    } else if n.starts_with("va_start") {
        Model {
            va_start: true,
            ..p().writes(A0)
        }
    } else if n.starts_with("va_copy") {
        Model {
            va_copy: true,
            ..p().writes(A0).reads(A1).copy(0, 1)
        }
    } else if n.starts_with("va_end")
        || n.starts_with("lifetime")
        || n.starts_with("dbg.")
        || n.starts_with("stacksave")
        || n.starts_with("stackrestore")
    {
        p()
    } else if n.starts_with("trap") {
        Model {
            noreturn: true,
            ..p()
        }
    } else {
        // Arithmetic intrinsics (bswap, ctpop, fabs, *.with.overflow, expect, ...): the result
        // is computed from the arguments, and the default data edges already say so.
        p().ret(RetKind::FromArgs(ArgSet::ALL))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_and_output_functions_are_classified() {
        assert_eq!(model("pcap_next").recv, Some(Recv::PcapNext));
        assert_eq!(model("pcap_dispatch").recv, Some(Recv::PcapLoop));
        assert_eq!(
            model("recvfrom").recv,
            Some(Recv::Buffers(ArgSet::of(&[1, 4])))
        );
        assert_eq!(model("pcap_inject").output, Some(Output::Packet));
        assert_eq!(model("fprintf").output, Some(Output::Log));
        assert_eq!(model("__fprintf_chk").output, Some(Output::Log));
        assert_eq!(model("write").output, Some(Output::ByFd));
        assert!(model("strlen").writes.is_empty());
        assert!(model("llvm.memcpy.p0i8.p0i8.i64").copies == vec![(0, 1)]);
    }

    #[test]
    fn unknown_functions_are_conservative() {
        let m = model("some_library_call");
        assert!(!m.known && m.deep);
        assert!(m.writes.contains(0) && m.writes.contains(7));
        assert_eq!(m.ret, RetKind::Unknown);
    }

    #[test]
    fn argsets() {
        let a = ArgSet::of(&[1, 3]).with_from(5);
        assert!(!a.contains(0) && a.contains(1) && !a.contains(2) && a.contains(3));
        assert!(a.contains(5) && a.contains(9));
        assert!(ArgSet::NONE.is_empty());
    }
}
