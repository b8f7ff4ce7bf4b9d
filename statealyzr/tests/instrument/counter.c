/* A small counter middlebox for the instrumentation test. Built with the instrumented
 * sources, it prints its state after each packet (the test's oracle of what changed) and
 * then the report of the variables the instrumentation saw updated. */
#include <netinet/in.h>
#include <netinet/ip.h>
#include <net/ethernet.h>
#include <pcap.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct entry {
    uint32_t ip;
    unsigned long n;
    struct entry *next;
};

static unsigned long pkts;
static unsigned long tcp_pkts;
static unsigned long big_pkts;
static unsigned long hist[16];
static struct entry *table;
static unsigned long last_len;

static struct entry *find(uint32_t ip)
{
    for (struct entry *e = table; e != NULL; e = e->next)
        if (e->ip == ip)
            return e;
    return NULL;
}

static void cb(u_char *user, const struct pcap_pkthdr *h, const u_char *pkt)
{
    (void)user;
    pkts++;
    hist[h->len % 16]++;
    if (h->caplen >= sizeof(struct ether_header) + sizeof(struct ip)) {
        const struct ip *ip = (const struct ip *)(pkt + sizeof(struct ether_header));
        if (ip->ip_p == IPPROTO_TCP)
            tcp_pkts++;
        struct entry *e = find(ip->ip_src.s_addr);
        if (e == NULL) {
            e = calloc(1, sizeof *e);
            if (e == NULL)
                exit(1);
            e->ip = ip->ip_src.s_addr;
            e->next = table;
            table = e;
        }
        e->n++;
    }
    if (h->len > 1000) {
        big_pkts++;
        big_pkts++;
    }
    last_len = h->len;
#ifdef STATEALYZR_INSTRUMENTED
    unsigned long hsum = 0, tsum = 0;
    for (int i = 0; i < 16; i++)
        hsum = hsum * 31 + hist[i];
    for (struct entry *e = table; e != NULL; e = e->next)
        tsum = tsum * 31 + (e->ip ^ e->n);
    printf("state pkts=%lu tcp_pkts=%lu big_pkts=%lu hist=%lu table=%lu last_len=%lu\n",
           pkts, tcp_pkts, big_pkts, hsum, tsum, last_len);
    statealyzr_report_updates(stdout);
#endif
}

int main(int argc, char **argv)
{
    char errbuf[PCAP_ERRBUF_SIZE];
    if (argc != 2)
        return 2;
    pcap_t *p = pcap_open_offline(argv[1], errbuf);
    if (p == NULL) {
        fprintf(stderr, "%s\n", errbuf);
        return 1;
    }
    pcap_loop(p, -1, cb, NULL);
    pcap_close(p);
    return 0;
}
