//! Synthetic middleboxes for benchmarks and scale tests.
//!
//! Real middleboxes cannot be downloaded here, so the benchmark analyses generated ones built
//! like them: a libpcap receive loop that parses headers into a context, a table of modules
//! (preprocessors/plugins) called through function pointers, per-module state in hash
//! tables keyed by different header fields, linked lists, counter arrays, signature tables
//! loaded at start-up, rate limiters whose verdict decides packet output, log output through
//! a variadic logger, signal-driven reloads, and plenty of code that only runs at start-up or
//! on demand. Every module knows what it planted, so the generator also gives the expected
//! classification of the state it created.

use std::fmt::Write as _;

/// A variable the generator planted and how it must be classified.
#[derive(Debug, Clone, PartialEq)]
pub struct Planted {
    pub name: String,
    pub top_level: bool,
    pub updateable: bool,
    pub flowspace: Vec<&'static str>,
}

pub struct Synth {
    /// (file name, contents)
    pub files: Vec<(String, String)>,
    pub planted: Vec<Planted>,
}

impl Synth {
    pub fn lines(&self) -> usize {
        self.files.iter().map(|(_, t)| t.lines().count()).sum()
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEYS: [(&str, &str, &str); 5] = [
    ("src", "c->src", "src_ip"),
    ("dst", "c->dst", "dst_ip"),
    ("sport", "c->sport", "src_port"),
    ("dport", "c->dport", "dst_port"),
    ("proto", "c->proto", "proto"),
];

const HEADER: &str = r#"/* mbox.h: shared definitions of the synthetic middlebox. */
#ifndef MBOX_H
#define MBOX_H
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <net/ethernet.h>
#include <pcap.h>
#include <stdint.h>
#include <stdio.h>

enum verdict { PASS = 0, DROP = 1 };

struct pkt_ctx {
    const struct pcap_pkthdr *hdr;
    const u_char *data;
    unsigned len;
    const struct ip *ip;
    const struct tcphdr *tcp;
    const struct udphdr *udp;
    uint32_t src, dst;
    uint16_t sport, dport;
    uint8_t proto;
    uint8_t flags;
    long now;
    const u_char *payload;
    unsigned payload_len;
};

struct module {
    const char *name;
    void (*init)(const char *config);
    int (*process)(struct pkt_ctx *c);
    void (*report)(FILE *out);
    void (*reload)(void);
};

void mb_log(const char *fmt, ...);
int cfg_int(const char *config, const char *key, int dflt);
const char *cfg_str(const char *config, const char *key, const char *dflt);
uint32_t mb_hash(const void *data, unsigned len, uint32_t seed);
char *mb_strdup(const char *s);
void mb_trim(char *s);
int mb_parse_ip(const char *s, uint32_t *out);
unsigned mb_checksum(const void *data, unsigned len);
#endif
"#;

/// The shared utility unit: logging, configuration parsing, hashing, strings.
fn util_c() -> String {
    r#"/* util.c: logging, configuration and helpers. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include "mbox.h"

FILE *mb_log_file;
static unsigned long mb_log_lines;
static char mb_cfg_value[256];

void mb_log(const char *fmt, ...)
{
    va_list ap;
    if (mb_log_file == NULL)
        mb_log_file = stderr;
    va_start(ap, fmt);
    vfprintf(mb_log_file, fmt, ap);
    va_end(ap);
    mb_log_lines++;
}

static const char *cfg_find(const char *config, const char *key)
{
    size_t klen = strlen(key);
    const char *p = config;
    while (p && *p) {
        while (*p == ' ' || *p == '\n' || *p == ';')
            p++;
        if (strncmp(p, key, klen) == 0 && p[klen] == '=')
            return p + klen + 1;
        p = strchr(p, ';');
    }
    return NULL;
}

int cfg_int(const char *config, const char *key, int dflt)
{
    const char *v = cfg_find(config, key);
    if (v == NULL)
        return dflt;
    char *end;
    long n = strtol(v, &end, 0);
    if (end == v)
        return dflt;
    return (int)n;
}

const char *cfg_str(const char *config, const char *key, const char *dflt)
{
    const char *v = cfg_find(config, key);
    if (v == NULL)
        return dflt;
    size_t n = 0;
    while (v[n] && v[n] != ';' && n < sizeof mb_cfg_value - 1)
        n++;
    memcpy(mb_cfg_value, v, n);
    mb_cfg_value[n] = 0;
    return mb_cfg_value;
}

uint32_t mb_hash(const void *data, unsigned len, uint32_t seed)
{
    const unsigned char *p = data;
    uint32_t h = seed ^ 2166136261u;
    for (unsigned i = 0; i < len; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

char *mb_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d == NULL)
        abort();
    memcpy(d, s, n);
    return d;
}

void mb_trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = 0;
    size_t i = 0;
    while (s[i] && isspace((unsigned char)s[i]))
        i++;
    if (i > 0)
        memmove(s, s + i, n - i + 1);
}

int mb_parse_ip(const char *s, uint32_t *out)
{
    struct in_addr a;
    if (inet_pton(AF_INET, s, &a) != 1)
        return -1;
    *out = a.s_addr;
    return 0;
}

unsigned mb_checksum(const void *data, unsigned len)
{
    const uint16_t *w = data;
    unsigned long sum = 0;
    while (len > 1) {
        sum += *w++;
        len -= 2;
    }
    if (len)
        sum += *(const uint8_t *)w;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (unsigned)~sum & 0xffff;
}
"#
    .to_string()
}

/// Start-up helpers that pad a module the way real code is padded: validation, formatting,
/// lookup tables. None of them runs per packet.
fn padding(out: &mut String, n: usize, k: usize, rng: &mut Rng) {
    let _ = writeln!(
        out,
        "static const char *m{n}_names_{k}[] = {{\"a{k}\", \"b{k}\", \"c{k}\", \"d{k}\"}};"
    );
    let _ = writeln!(out, "static int m{n}_check_{k}(const char *s, int lim)\n{{");
    let _ = writeln!(
        out,
        "    int score = 0;\n    char buf[64];\n    snprintf(buf, sizeof buf, \"%s-%d\", s, lim);"
    );
    let _ = writeln!(
        out,
        "    for (unsigned i = 0; i < sizeof m{n}_names_{k} / sizeof m{n}_names_{k}[0]; i++) {{"
    );
    let _ = writeln!(
        out,
        "        if (strstr(buf, m{n}_names_{k}[i]) != NULL)\n            score += (int)i + 1;"
    );
    let _ = writeln!(
        out,
        "        else if (strlen(buf) > (size_t)lim)\n            score -= 1;"
    );
    let _ = writeln!(out, "    }}");
    match rng.below(3) {
        0 => {
            let _ = writeln!(out, "    switch (score % 4) {{\n    case 0:\n        score += {};\n        break;\n    case 1:\n        score *= 2;\n        break;\n    default:\n        score = -score;\n    }}", rng.below(100));
        }
        1 => {
            let _ = writeln!(
                out,
                "    while (score > {} )\n        score /= 2;",
                10 + rng.below(50)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "    if (score < 0 && lim > {})\n        score = lim - score;",
                rng.below(20)
            );
        }
    }
    let _ = writeln!(out, "    return score;\n}}\n");
}

/// One module. Returns its source and what it planted.
fn module(n: usize, rng: &mut Rng, pad: usize) -> (String, Vec<Planted>) {
    let mut s = String::new();
    let mut planted = Vec::new();
    let mut plant = |name: String, top: bool, upd: bool, fs: Vec<&'static str>| {
        planted.push(Planted {
            name,
            top_level: top,
            updateable: upd,
            flowspace: fs,
        })
    };
    let _ = writeln!(s, "/* mod{n}.c: generated module {n}. */");
    s.push_str("#include <stdlib.h>\n#include <string.h>\n#include \"mbox.h\"\n\n");
    let kind = n % 5;
    // Start-up-only state every module has.
    let _ = writeln!(
        s,
        "static char *m{n}_config_path;\nstatic int m{n}_debug;\n"
    );
    plant(format!("m{n}_config_path"), false, false, vec![]);
    match kind {
        0 => {
            // Hash table keyed by a subset of the five-tuple.
            let mut fields: Vec<usize> = (0..5).filter(|_| rng.below(2) == 0).collect();
            if fields.is_empty() {
                fields.push(rng.below(5) as usize);
            }
            let _ = writeln!(s, "struct m{n}_entry {{");
            for &f in &fields {
                let _ = writeln!(s, "    uint32_t {};", KEYS[f].0);
            }
            let _ = writeln!(s, "    unsigned long packets, bytes;\n    long last;\n    struct m{n}_entry *next;\n}};\n");
            let buckets = 256 << rng.below(4);
            let _ = writeln!(s, "#define M{n}_BUCKETS {buckets}");
            let _ = writeln!(s, "static struct m{n}_entry *m{n}_table[M{n}_BUCKETS];\nstatic unsigned long m{n}_entries;\nstatic int m{n}_timeout = 60;\nstatic long m{n}_last_sweep;\n");
            let mut fs: Vec<&'static str> = fields.iter().map(|&f| KEYS[f].2).collect();
            fs.sort_unstable();
            plant(format!("m{n}_table"), true, true, fs);
            plant(format!("m{n}_entries"), true, true, vec![]);
            plant(format!("m{n}_timeout"), true, true, vec![]);
            let _ = writeln!(
                s,
                "static uint32_t m{n}_bucket(const struct pkt_ctx *c)\n{{\n    uint32_t key[{}];",
                fields.len()
            );
            for (i, &f) in fields.iter().enumerate() {
                let _ = writeln!(s, "    key[{i}] = {};", KEYS[f].1);
            }
            let _ = writeln!(
                s,
                "    return mb_hash(key, sizeof key, {}) % M{n}_BUCKETS;\n}}\n",
                rng.below(1000)
            );
            let _ = writeln!(s, "static struct m{n}_entry *m{n}_find(const struct pkt_ctx *c, int create)\n{{\n    uint32_t b = m{n}_bucket(c);\n    struct m{n}_entry *e;");
            let cond: Vec<String> = fields
                .iter()
                .map(|&f| format!("e->{} == {}", KEYS[f].0, KEYS[f].1))
                .collect();
            let _ = writeln!(s, "    for (e = m{n}_table[b]; e != NULL; e = e->next)\n        if ({})\n            return e;", cond.join(" && "));
            let _ = writeln!(s, "    if (!create)\n        return NULL;\n    e = calloc(1, sizeof *e);\n    if (e == NULL)\n        abort();");
            for &f in &fields {
                let _ = writeln!(s, "    e->{} = {};", KEYS[f].0, KEYS[f].1);
            }
            let _ = writeln!(s, "    e->next = m{n}_table[b];\n    m{n}_table[b] = e;\n    m{n}_entries++;\n    return e;\n}}\n");
            let _ = writeln!(s, "static void m{n}_sweep(long now)\n{{\n    for (int b = 0; b < M{n}_BUCKETS; b++) {{\n        struct m{n}_entry **pp = &m{n}_table[b];\n        while (*pp != NULL) {{\n            struct m{n}_entry *e = *pp;\n            if (now - e->last > m{n}_timeout) {{\n                *pp = e->next;\n                free(e);\n                m{n}_entries--;\n            }} else {{\n                pp = &e->next;\n            }}\n        }}\n    }}\n    m{n}_last_sweep = now;\n}}\n");
            plant(format!("m{n}_last_sweep"), true, true, vec![]);
            let _ = writeln!(s, "static int m{n}_process(struct pkt_ctx *c)\n{{\n    struct m{n}_entry *e = m{n}_find(c, 1);\n    e->packets++;\n    e->bytes += c->len;\n    e->last = c->now;\n    if (c->now - m{n}_last_sweep > m{n}_timeout)\n        m{n}_sweep(c->now);\n    if (m{n}_debug && e->packets == 1)\n        mb_log(\"m{n}: new entry, %lu now\\n\", m{n}_entries);\n    return PASS;\n}}\n");
            let _ = writeln!(s, "static void m{n}_reload(void)\n{{\n    m{n}_timeout = m{n}_timeout > 10 ? m{n}_timeout - 1 : 60;\n}}\n");
            let _ = writeln!(s, "static void m{n}_report(FILE *out)\n{{\n    fprintf(out, \"m{n}: %lu entries\\n\", m{n}_entries);\n}}\n");
        }
        1 => {
            let (field, expr, name) = if rng.below(2) == 0 {
                ("src", "c->src", "src_ip")
            } else {
                ("dst", "c->dst", "dst_ip")
            };
            let _ = writeln!(s, "struct m{n}_host {{\n    uint32_t addr;\n    unsigned long count;\n    int alerted;\n    struct m{n}_host *next;\n}};\n");
            let _ = writeln!(s, "static struct m{n}_host *m{n}_hosts;\nstatic int m{n}_threshold = {};\nstatic unsigned long m{n}_alerts;\n", 100 + rng.below(900));
            plant(format!("m{n}_hosts"), true, true, vec![name]);
            plant(format!("m{n}_threshold"), true, false, vec![]);
            plant(format!("m{n}_alerts"), true, true, vec![]);
            let _ = writeln!(s, "static struct m{n}_host *m{n}_lookup(uint32_t addr)\n{{\n    struct m{n}_host *h = m{n}_hosts;\n    while (h != NULL && h->addr != addr)\n        h = h->next;\n    return h;\n}}\n");
            let _ = writeln!(s, "static int m{n}_process(struct pkt_ctx *c)\n{{\n    struct m{n}_host *h = m{n}_lookup({expr});\n    if (h == NULL) {{\n        h = calloc(1, sizeof *h);\n        if (h == NULL)\n            abort();\n        h->addr = {expr};\n        h->next = m{n}_hosts;\n        m{n}_hosts = h;\n    }}\n    if (++h->count > (unsigned long)m{n}_threshold && !h->alerted) {{\n        h->alerted = 1;\n        m{n}_alerts++;\n        mb_log(\"m{n}: host %08x over threshold\\n\", (unsigned)h->addr);\n    }}\n    return PASS;\n}}\n");
            let _ = field;
            let _ = writeln!(s, "static void m{n}_reload(void)\n{{\n}}\n");
            let _ = writeln!(s, "static void m{n}_report(FILE *out)\n{{\n    unsigned long k = 0;\n    for (struct m{n}_host *h = m{n}_hosts; h != NULL; h = h->next)\n        k++;\n    fprintf(out, \"m{n}: %lu hosts, %lu alerts\\n\", k, m{n}_alerts);\n}}\n");
        }
        2 => {
            let (fld, name) = if rng.below(2) == 0 {
                ("c->dport", "dst_port")
            } else {
                ("c->sport", "src_port")
            };
            let _ = writeln!(s, "static unsigned long m{n}_ports[65536];\nstatic unsigned long m{n}_by_proto[256];\nstatic unsigned m{n}_scan_limit = {};\n", 10 + rng.below(100));
            plant(format!("m{n}_ports"), true, true, vec![name]);
            plant(format!("m{n}_by_proto"), true, true, vec!["proto"]);
            plant(format!("m{n}_scan_limit"), true, false, vec![]);
            let _ = writeln!(s, "static int m{n}_process(struct pkt_ctx *c)\n{{\n    m{n}_by_proto[c->proto]++;\n    if (c->tcp == NULL && c->udp == NULL)\n        return PASS;\n    unsigned long v = ++m{n}_ports[ntohs({fld})];\n    if (v == m{n}_scan_limit)\n        mb_log(\"m{n}: port %u hit %lu times\\n\", ntohs({fld}), v);\n    return PASS;\n}}\n");
            let _ = writeln!(s, "static void m{n}_reload(void)\n{{\n}}\n");
            let _ = writeln!(s, "static void m{n}_report(FILE *out)\n{{\n    unsigned long t = 0;\n    for (int i = 0; i < 256; i++)\n        t += m{n}_by_proto[i];\n    fprintf(out, \"m{n}: %lu packets\\n\", t);\n}}\n");
        }
        3 => {
            let _ = writeln!(s, "struct m{n}_sig {{\n    char pattern[32];\n    unsigned len;\n    unsigned long hits;\n}};\n");
            let _ = writeln!(s, "static struct m{n}_sig m{n}_sigs[64];\nstatic int m{n}_nsigs;\nstatic unsigned long m{n}_matched;\n");
            plant(format!("m{n}_sigs"), true, true, vec![]);
            plant(format!("m{n}_nsigs"), true, false, vec![]);
            plant(format!("m{n}_matched"), true, true, vec![]);
            let _ = writeln!(s, "static int m{n}_match(const u_char *data, unsigned len, const struct m{n}_sig *sg)\n{{\n    if (sg->len == 0 || len < sg->len)\n        return 0;\n    for (unsigned i = 0; i + sg->len <= len; i++)\n        if (memcmp(data + i, sg->pattern, sg->len) == 0)\n            return 1;\n    return 0;\n}}\n");
            let _ = writeln!(s, "static int m{n}_process(struct pkt_ctx *c)\n{{\n    int verdict = PASS;\n    for (int i = 0; i < m{n}_nsigs; i++) {{\n        if (m{n}_match(c->payload, c->payload_len, &m{n}_sigs[i])) {{\n            m{n}_sigs[i].hits++;\n            m{n}_matched++;\n            verdict = DROP;\n        }}\n    }}\n    return verdict;\n}}\n");
            let _ = writeln!(s, "static void m{n}_reload(void)\n{{\n}}\n");
            let _ = writeln!(s, "static void m{n}_report(FILE *out)\n{{\n    fprintf(out, \"m{n}: %lu matches\\n\", m{n}_matched);\n}}\n");
        }
        _ => {
            let _ = writeln!(
                s,
                "struct m{n}_bucket {{\n    long tokens;\n    long stamp;\n}};\n"
            );
            let _ = writeln!(s, "static struct m{n}_bucket m{n}_buckets[256];\nstatic long m{n}_rate = {};\nstatic unsigned long m{n}_dropped;\n", 1000 + rng.below(10000));
            plant(format!("m{n}_buckets"), true, true, vec!["proto"]);
            plant(format!("m{n}_rate"), true, true, vec![]);
            plant(format!("m{n}_dropped"), true, true, vec![]);
            let _ = writeln!(s, "static int m{n}_process(struct pkt_ctx *c)\n{{\n    struct m{n}_bucket *b = &m{n}_buckets[c->proto];\n    if (c->now > b->stamp) {{\n        b->tokens += (c->now - b->stamp) * m{n}_rate;\n        if (b->tokens > m{n}_rate * 4)\n            b->tokens = m{n}_rate * 4;\n        b->stamp = c->now;\n    }}\n    if (b->tokens < (long)c->len) {{\n        m{n}_dropped++;\n        return DROP;\n    }}\n    b->tokens -= c->len;\n    return PASS;\n}}\n");
            let _ = writeln!(
                s,
                "static void m{n}_reload(void)\n{{\n    m{n}_rate = m{n}_rate * 2;\n}}\n"
            );
            let _ = writeln!(s, "static void m{n}_report(FILE *out)\n{{\n    fprintf(out, \"m{n}: %lu dropped\\n\", m{n}_dropped);\n}}\n");
        }
    }
    for k in 0..pad {
        padding(&mut s, n, k, rng);
    }
    // Start-up: read the module's configuration.
    let _ = writeln!(s, "static void m{n}_init(const char *config)\n{{\n    char path[128];\n    int score = 0;\n    snprintf(path, sizeof path, \"%s\", cfg_str(config, \"m{n}.path\", \"/etc/mbox/m{n}.conf\"));\n    mb_trim(path);\n    m{n}_config_path = mb_strdup(path);\n    m{n}_debug = cfg_int(config, \"m{n}.debug\", 0);");
    for k in 0..pad {
        let _ = writeln!(
            s,
            "    score += m{n}_check_{k}(m{n}_config_path, {});",
            8 + k
        );
    }
    if kind == 3 {
        let _ = writeln!(s, "    const char *pats = cfg_str(config, \"m{n}.patterns\", \"GET ,POST ,HEAD \");\n    char buf[256];\n    snprintf(buf, sizeof buf, \"%s\", pats);\n    for (char *tok = strtok(buf, \",\"); tok != NULL && m{n}_nsigs < 64; tok = strtok(NULL, \",\")) {{\n        snprintf(m{n}_sigs[m{n}_nsigs].pattern, sizeof m{n}_sigs[0].pattern, \"%s\", tok);\n        m{n}_sigs[m{n}_nsigs].len = (unsigned)strlen(m{n}_sigs[m{n}_nsigs].pattern);\n        m{n}_nsigs++;\n    }}");
    }
    let _ = writeln!(s, "    if (m{n}_debug)\n        mb_log(\"m{n}: configured from %s (score %d)\\n\", m{n}_config_path, score);\n}}\n");
    let _ = writeln!(s, "const struct module mod_{n} = {{\"m{n}\", m{n}_init, m{n}_process, m{n}_report, m{n}_reload}};");
    plant(format!("m{n}_debug"), kind == 0, false, vec![]);
    (s, planted)
}

fn main_c(modules: usize) -> String {
    let mut s = String::from(
        "/* main.c: receive loop, header parsing, module dispatch, output. */\n\
         #include <signal.h>\n#include <stdlib.h>\n#include <string.h>\n#include \"mbox.h\"\n\n",
    );
    for n in 0..modules {
        let _ = writeln!(s, "extern const struct module mod_{n};");
    }
    s.push_str("static const struct module *const all_modules[] = {\n");
    for n in 0..modules {
        let _ = writeln!(s, "    &mod_{n},");
    }
    s.push_str("};\n\n");
    s.push_str(
        r#"#define NMODULES (sizeof all_modules / sizeof all_modules[0])

static const struct module *active[NMODULES];
static unsigned nactive;
static pcap_dumper_t *out;
static volatile sig_atomic_t reload_pending, report_pending;
unsigned long total_packets, total_bytes, dropped_packets;
static char config_text[4096];

static void on_hup(int sig)
{
    (void)sig;
    reload_pending = 1;
}

static void on_usr1(int sig)
{
    (void)sig;
    report_pending = 1;
}

static int parse(struct pkt_ctx *c, const struct pcap_pkthdr *h, const u_char *data)
{
    memset(c, 0, sizeof *c);
    c->hdr = h;
    c->data = data;
    c->len = h->caplen;
    c->now = h->ts.tv_sec;
    if (c->len < sizeof(struct ether_header) + sizeof(struct ip))
        return -1;
    c->ip = (const struct ip *)(data + sizeof(struct ether_header));
    if (c->ip->ip_v != 4)
        return -1;
    c->src = c->ip->ip_src.s_addr;
    c->dst = c->ip->ip_dst.s_addr;
    c->proto = c->ip->ip_p;
    const u_char *l4 = (const u_char *)c->ip + c->ip->ip_hl * 4;
    unsigned off = (unsigned)(l4 - data);
    if (c->proto == IPPROTO_TCP && off + sizeof(struct tcphdr) <= c->len) {
        c->tcp = (const struct tcphdr *)l4;
        c->sport = c->tcp->th_sport;
        c->dport = c->tcp->th_dport;
        c->flags = c->tcp->th_flags;
        off += c->tcp->th_off * 4;
    } else if (c->proto == IPPROTO_UDP && off + sizeof(struct udphdr) <= c->len) {
        c->udp = (const struct udphdr *)l4;
        c->sport = c->udp->uh_sport;
        c->dport = c->udp->uh_dport;
        off += sizeof(struct udphdr);
    }
    c->payload = data + (off < c->len ? off : c->len);
    c->payload_len = off < c->len ? c->len - off : 0;
    return 0;
}

static void load_config(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    size_t n = fread(config_text, 1, sizeof config_text - 1, f);
    config_text[n] = 0;
    fclose(f);
}

int main(int argc, char **argv)
{
    char errbuf[PCAP_ERRBUF_SIZE];
    struct pcap_pkthdr *hdr;
    const u_char *data;
    struct pkt_ctx ctx;

    if (argc < 3) {
        fprintf(stderr, "usage: %s in.pcap out.pcap [config]\n", argv[0]);
        return 2;
    }
    if (argc > 3)
        load_config(argv[3]);
    pcap_t *in = pcap_open_offline(argv[1], errbuf);
    if (in == NULL) {
        fprintf(stderr, "%s\n", errbuf);
        return 1;
    }
    out = pcap_dump_open(in, argv[2]);
    for (unsigned i = 0; i < NMODULES; i++) {
        all_modules[i]->init(config_text);
        if (cfg_int(config_text, all_modules[i]->name, 1))
            active[nactive++] = all_modules[i];
    }
    signal(SIGHUP, on_hup);
    signal(SIGUSR1, on_usr1);
    while (pcap_next_ex(in, &hdr, &data) == 1) {
        total_packets++;
        total_bytes += hdr->caplen;
        if (reload_pending) {
            for (unsigned i = 0; i < nactive; i++)
                active[i]->reload();
            reload_pending = 0;
        }
        if (report_pending) {
            for (unsigned i = 0; i < nactive; i++)
                active[i]->report(stderr);
            report_pending = 0;
        }
        if (parse(&ctx, hdr, data) < 0)
            continue;
        int verdict = PASS;
        for (unsigned i = 0; i < nactive; i++)
            verdict |= active[i]->process(&ctx);
        if (verdict == PASS)
            pcap_dump((u_char *)out, hdr, data);
        else
            dropped_packets++;
    }
    for (unsigned i = 0; i < nactive; i++)
        active[i]->report(stderr);
    pcap_dump_close(out);
    pcap_close(in);
    return 0;
}
"#,
    );
    s
}

/// A middlebox of `modules` modules, each padded with `pad` start-up helpers. About
/// 130 + 12 * pad lines per module.
pub fn generate(modules: usize, pad: usize, seed: u64) -> Synth {
    let mut rng = Rng(seed.max(1));
    let mut files = vec![
        ("mbox.h".to_string(), HEADER.to_string()),
        ("util.c".to_string(), util_c()),
        ("main.c".to_string(), main_c(modules)),
    ];
    let mut planted = vec![
        Planted {
            name: "total_packets".into(),
            top_level: true,
            updateable: true,
            flowspace: vec![],
        },
        Planted {
            name: "dropped_packets".into(),
            top_level: true,
            updateable: true,
            flowspace: vec![],
        },
        Planted {
            name: "reload_pending".into(),
            top_level: true,
            updateable: true,
            flowspace: vec![],
        },
        Planted {
            name: "config_text".into(),
            top_level: false,
            updateable: false,
            flowspace: vec![],
        },
    ];
    for n in 0..modules {
        let (text, p) = module(n, &mut rng, pad);
        files.push((format!("mod{n}.c"), text));
        planted.extend(p);
    }
    Synth { files, planted }
}

/// Module count and padding that give about `lines` lines.
pub fn shape_for(lines: usize) -> (usize, usize) {
    let pad = 16;
    let per_module = 210 + 12 * pad;
    (((lines.saturating_sub(400)) / per_module).max(1), pad)
}
