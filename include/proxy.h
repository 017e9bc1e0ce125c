/*
 * proxy.h - the PROXY protocol version 2 header (HAProxy's "send-proxy-v2"),
 * parsed from the first bytes of a connection before TLS.
 *
 * A load balancer in TCP mode (TLS passed through, so mTLS stays end to end)
 * prepends one binary header naming the client's real address:
 *
 *   12-byte signature \r\n\r\n\0\r\nQUIT\n
 *   1 byte  version (high nibble, must be 2) and command (low nibble: 0 LOCAL, 1 PROXY)
 *   1 byte  address family (high nibble: 1 INET, 2 INET6, 3 UNIX, 0 UNSPEC) and
 *           transport (low nibble: 1 STREAM, 2 DGRAM, 0 UNSPEC)
 *   2 bytes length of what follows, network order
 *   addresses (INET 12 bytes, INET6 36 bytes, UNIX 216 bytes), then TLVs (ignored)
 *
 * The parser is a pure function over the bytes received so far: it says
 * "need more", "done after N bytes" or "refused, because ...". It never
 * reads past the header, so the bytes after it are the TLS ClientHello.
 *
 * Refused: a version 1 (text) header, a bad signature, a version other than
 * 2, a command other than LOCAL/PROXY, a PROXY command over anything but
 * TCP over IPv4/IPv6, a length too small for the family's addresses, a
 * header longer than PROXY_V2_MAX_HEADER.
 *
 * Thread: any; no state, no allocation.
 */
#ifndef CMS_PROXY_H
#define CMS_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROXY_V2_SIG_LEN 12
#define PROXY_V2_FIXED_LEN 16 /* signature, version/command, family, length */
/* Longest header accepted: addresses of any family plus room for the TLVs a
 * load balancer adds (ALPN, authority, unique id, SSL info). */
#define PROXY_V2_MAX_HEADER 1024

typedef struct proxy_info {
    bool local;     /* LOCAL command (health check by the proxy itself): no address */
    int family;     /* AF_INET or AF_INET6 when !local, else 0 */
    uint8_t src_addr[16], dst_addr[16]; /* network order; 4 bytes used for AF_INET */
    uint16_t src_port, dst_port;        /* host order */
} proxy_info;

/*
 * Parses a PROXY v2 header at the start of buf (len bytes received so far).
 * Returns:
 *   > 0         the header is complete and took that many bytes; *out is set;
 *   CMS_EAGAIN  the bytes so far are a valid beginning: wait for more;
 *   CMS_EPROTO  not a valid v2 header (*why, static text, says what);
 *   CMS_ELIMIT  the header announces more than PROXY_V2_MAX_HEADER bytes.
 * out and why may be NULL. Nothing is written to *out unless the result is > 0.
 */
int proxy_v2_parse(const void *buf, size_t len, proxy_info *out, const char **why);

/*
 * Formats the source address of info as "ip:port" ("[v6]:port"), the form
 * net_conn_peer uses; "local" for a LOCAL header. Returns out.
 */
char *proxy_src_text(const proxy_info *info, char *out, size_t cap);

/*
 * Whether addr (a sockaddr_in or sockaddr_in6, family-tagged) is in the
 * allowlist: a comma- or space-separated list of addresses or CIDR blocks,
 * IPv4 or IPv6 ("127.0.0.1, 10.1.0.0/16, ::1"). An IPv4-mapped IPv6 address
 * is matched as IPv4. Returns 1 (listed), 0 (not listed) or CMS_EINVAL when
 * the list is malformed (then *why says where).
 */
struct sockaddr;
int proxy_allowlist_match(const char *list, const struct sockaddr *addr, const char **why);

/* Checks that list is a well-formed allowlist. CMS_OK or CMS_EINVAL (*why set). */
int proxy_allowlist_check(const char *list, const char **why);

#endif
