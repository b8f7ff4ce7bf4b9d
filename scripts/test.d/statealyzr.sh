#!/usr/bin/env bash
# StateAlyzr end to end, the way a user runs it on a make-based middlebox: bear records the
# build into compile_commands.json, statealyzr analyses it, and the three output formats are
# checked (JSON shape of statealyzr/README.md, SARIF 2.1.0, text groups). Runs from the
# repository root after the release build; takes a few seconds.
set -euo pipefail
B=${STATEALYZR:-target/release/statealyzr}
[ -x "$B" ] || { echo "statealyzr: $B not built" >&2; exit 1; }
command -v bear >/dev/null || { echo "statealyzr: bear is not installed (scripts/apt-packages.txt)" >&2; exit 1; }
B=$(cd "$(dirname "$B")" && pwd)/$(basename "$B")
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/proj/src" "$W/proj/include"
cat > "$W/proj/include/flows.h" <<'C'
#include <stdint.h>
struct flow { uint32_t src; unsigned long packets; struct flow *next; };
struct flow *flow_get(uint32_t src);
extern unsigned long flows_created;
C
cat > "$W/proj/src/flows.c" <<'C'
#include <stdlib.h>
#include "flows.h"
static struct flow *buckets[TABLE_SIZE];
unsigned long flows_created;
struct flow *flow_get(uint32_t src)
{
    struct flow **b = &buckets[src % TABLE_SIZE];
    for (struct flow *f = *b; f; f = f->next)
        if (f->src == src)
            return f;
    struct flow *f = calloc(1, sizeof *f);
    if (!f)
        abort();
    f->src = src;
    f->next = *b;
    *b = f;
    flows_created++;
    return f;
}
C
cat > "$W/proj/src/main.c" <<'C'
#include <netinet/ip.h>
#include <net/ethernet.h>
#include <pcap.h>
#include <stdio.h>
#include "flows.h"
static const char *dev_name;
static void on_packet(u_char *u, const struct pcap_pkthdr *h, const u_char *p)
{
    (void)u;
    if (h->caplen < sizeof(struct ether_header) + sizeof(struct ip))
        return;
    const struct ip *ip = (const struct ip *)(p + sizeof(struct ether_header));
    struct flow *f = flow_get(ip->ip_src.s_addr);
    if (++f->packets == 1000)
        printf("heavy hitter %08x\n", (unsigned)f->src);
}
int main(int argc, char **argv)
{
    char err[PCAP_ERRBUF_SIZE];
    dev_name = argc > 1 ? argv[1] : "in.pcap";
    pcap_t *p = pcap_open_offline(dev_name, err);
    if (!p)
        return 1;
    return pcap_loop(p, -1, on_packet, NULL) < 0;
}
C
cat > "$W/proj/Makefile" <<'M'
CFLAGS = -O2 -Wall -Iinclude -DTABLE_SIZE=256
flowmon: src/main.o src/flows.o
	$(CC) -o $@ $^ -lpcap
M
(cd "$W/proj" && bear -- make -s >/dev/null)
[ -s "$W/proj/compile_commands.json" ] || { echo "statealyzr: bear wrote no compile_commands.json" >&2; exit 1; }

"$B" analyze --format json -o "$W/out.json" "$W/proj/compile_commands.json" 2>"$W/err.log"
"$B" analyze --format sarif -o "$W/out.sarif" "$W/proj" 2>>"$W/err.log"
"$B" analyze --stats "$W/proj/compile_commands.json" >"$W/out.txt" 2>>"$W/err.log"
python3 - "$W/out.json" "$W/out.sarif" "$W/out.txt" "$W/err.log" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert set(d) == {"counts", "packet_procedures", "variables"}, d.keys()
assert set(d["counts"]) == {"all", "persistent", "top_level", "updateable", "pkt_output", "log_output"}
assert set(d["packet_procedures"]) == {"flow_get", "main", "on_packet"}, d["packet_procedures"]
v = {(x["function"], x["name"]): x for x in d["variables"]}
keys = {"name", "function", "file", "line", "storage", "persistent", "top_level", "updateable",
        "flowspace", "pkt_output", "log_output"}
for x in d["variables"]:
    assert set(x) == keys, x
    assert x["persistent"] is True
    assert x["storage"] in ("global", "static", "loop_local", "loop_param")
b = v[(None, "buckets")]
assert b["storage"] == "static" and b["file"].endswith("src/flows.c") and b["line"] == 3, b
assert b["top_level"] and b["updateable"] and b["flowspace"] == ["src_ip"] and b["log_output"], b
c = v[(None, "flows_created")]
assert c["storage"] == "global" and c["updateable"] and not c["log_output"] and c["flowspace"] == [], c
n = v[(None, "dev_name")]
assert not n["top_level"] and not n["updateable"], n
assert d["counts"]["persistent"] == len(d["variables"])
assert d["counts"]["updateable"] == sum(x["updateable"] for x in d["variables"])
s = json.load(open(sys.argv[2]))
assert s["version"] == "2.1.0" and len(s["runs"]) == 1
run = s["runs"][0]
assert run["tool"]["driver"]["name"] == "statealyzr"
rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
assert len(run["results"]) == len(d["variables"])
for r in run["results"]:
    assert r["ruleId"] in rules and r["level"] in ("none", "note", "warning", "error")
    loc = r["locations"][0]["physicalLocation"]
    assert loc["region"]["startLine"] >= 1 and loc["artifactLocation"]["uri"]
t = open(sys.argv[3]).read()
for g in ("Serialise and migrate", "Clone once", "Ignore"):
    assert g in t, g
assert "peak memory" in open(sys.argv[4]).read()
PY
echo "statealyzr: compile_commands.json from bear, JSON/SARIF/text outputs: ok"
