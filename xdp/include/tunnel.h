/* SPDX-License-Identifier: Apache-2.0 */
/*
 * VxLAN (RFC 7348) and Geneve (RFC 8926) recognition. tg_tunnel_inspect() reads the tunnel
 * header behind an outer UDP header and decides: not a tunnel, decap, leave alone, or drop.
 * A tunnel port is an ordinary UDP port to everyone else: what is not a tunnel packet at all
 * (the UDP length is wrong, the tunnel header is cut, VxLAN's I flag is clear, Geneve's version
 * is not 0) is judged as the plain UDP it is, unless the operator asked for strict tunnel ports
 * (TG_CFG_F_STRICT_TUNNEL_PORTS: then it is dropped with its reason). A fragment is never
 * decapsulated (XDP sees one piece of the datagram): the stack reassembles it. Only what is a
 * tunnel packet for a VNI terminated here is held to the tunnel's rules and dropped if broken.
 * The caller strips ti->outer_len bytes with bpf_xdp_adjust_head and ends the inner frame where
 * the UDP payload ends (ti->payload_end), as a VTEP's UDP socket would receive it: every tunnel
 * byte read, up to and including the inner Ethernet header and its VLAN tags, must lie inside
 * that payload. Only IPv4/IPv6 payloads are decapsulated: anything else (ARP, ...) stays
 * encapsulated, since the stripped frame would reach the underlay's own stack unjudged.
 */
#ifndef TG_TUNNEL_H
#define TG_TUNNEL_H

#include "maps.h"
#include "parse.h"

#define TG_VXLAN_FLAG_I 0x08          /* "VNI is valid": MUST be set (RFC 7348 5) */
#define TG_GENEVE_VERSION_SHIFT 6
#define TG_GENEVE_OPTLEN_MASK 0x3f    /* 6-bit option length, in 4-byte words */
#define TG_GENEVE_FLAG_O 0x80         /* control packet: payload MUST NOT be forwarded */
#define TG_GENEVE_FLAG_C 0x40         /* critical options present */
#define TG_GENEVE_OPT_UNIT 4
#define TG_GENEVE_OPT_TYPE_CRITICAL 0x80
#define TG_GENEVE_OPT_LEN_MASK 0x1f
/* Options fill at most 63 words; each option is at least one word, so this caps the walk. */
#define TG_GENEVE_OPTS_MAX_LEN (TG_GENEVE_OPTLEN_MASK * TG_GENEVE_OPT_UNIT)
#define TG_GENEVE_OPTS_MAX (TG_GENEVE_OPTLEN_MASK)
#define TG_ETH_P_TEB 0x6558           /* Transparent Ethernet Bridging */
#define TG_VNI_SHIFT_HI 16
#define TG_VNI_SHIFT_MID 8

struct tg_vxlanhdr {
	__u8 flags;
	__u8 reserved1[3];
	__u8 vni[3];
	__u8 reserved2;
};

struct tg_genevehdr {
	__u8 ver_optlen; /* Ver:2 | Opt Len:6 */
	__u8 flags;      /* O:1 | C:1 | Rsvd:6 */
	__be16 proto;
	__u8 vni[3];
	__u8 reserved;
};

struct tg_geneve_opt {
	__be16 opt_class;
	__u8 type;   /* high bit: critical */
	__u8 length; /* R:3 | Length:5, in 4-byte words after this header */
};

enum tg_tun_result {
	TG_TUN_NONE = 0,  /* not a tunnel port: an ordinary packet */
	TG_TUN_DECAP = 1, /* strip ti->outer_len bytes */
	TG_TUN_LEAVE = 2, /* not decapped (ti->event): judged as itself */
	TG_TUN_DROP = 3,  /* ti->reason */
};

struct tg_tunnel_info {
	__u32 vni;
	__u32 counter; /* TG_TUN_DECAP: the tunnel's entry in tunnel_counters */
	__u32 outer_len;
	__u32 payload_end; /* end of the outer UDP payload, from the frame's start */
	__u32 reason; /* enum tg_reason, for TG_TUN_DROP */
	__u32 event;  /* enum tg_event, for TG_TUN_LEAVE */
	__u8 type;    /* enum tg_tunnel_type */
	__u8 not_ip;  /* TG_TUN_LEAVE: a tunnel we terminate, but its payload is not IP */
	__u8 fragment; /* TG_TUN_LEAVE: the first fragment of a datagram to a tunnel port */
};

static __always_inline __u32 tg_vni(const __u8 *vni)
{
	return ((__u32)vni[0] << TG_VNI_SHIFT_HI) | ((__u32)vni[1] << TG_VNI_SHIFT_MID) | vni[2];
}

/* Bucket `second` (0 or 1) of a VNI (tidegate_abi.h: murmur3's finaliser, modulo the buckets). */
static __always_inline __u32 tg_tunnel_bucket(__u32 vni, __u32 second)
{
	__u32 h = vni | (second ? TG_TUNNEL_SECOND : 0);

	h ^= h >> 16;
	h *= TG_TUNNEL_MIX1;
	h ^= h >> 13;
	h *= TG_TUNNEL_MIX2;
	h ^= h >> 16;
	return h % TG_TUNNEL_BUCKETS;
}

/* The way holding `vni`, or NULL: its two buckets' ways, compared in turn. */
static __always_inline struct tg_tunnel *tg_tunnel_find(__u32 vni)
{
	__u32 key = vni | TG_TUNNEL_KEY_USED, i, w, b;
	struct tg_tunnel_bucket *tb;

	for (i = 0; i < 2; i++) {
		b = tg_tunnel_bucket(vni, i);
		tb = tunnels.lookup(&b);
		if (!tb)
			continue; /* unreachable: the modulo keeps it inside the array */
		for (w = 0; w < TG_TUNNEL_WAYS; w++)
			if (tb->ways[w].key == key)
				return &tb->ways[w];
	}
	return NULL;
}

/* Unknown VNI, or a VNI not configured for this encapsulation. */
static __always_inline int tg_tunnel_admit(const struct tg_config *cfg, struct tg_tunnel_info *ti,
					   __u32 type_flag)
{
	struct tg_tunnel *tun = tg_tunnel_find(ti->vni);

	if (tun && (tun->flags & type_flag)) {
		ti->counter = tun->counter;
		return TG_TUN_DECAP;
	}
	if (cfg->unknown_vni_action == TG_UNKNOWN_VNI_DROP) {
		ti->reason = TG_REASON_DROP_UNKNOWN_VNI;
		return TG_TUN_DROP;
	}
	ti->event = TG_EVENT_UNKNOWN_VNI_PASSED;
	return TG_TUN_LEAVE;
}

static __always_inline int tg_drop(struct tg_tunnel_info *ti, __u32 reason)
{
	ti->reason = reason;
	return TG_TUN_DROP;
}

/* UDP to a tunnel port that is no tunnel packet: plain UDP, or with strict tunnel ports a drop. */
static __always_inline int tg_not_tunnel(const struct tg_config *cfg, struct tg_tunnel_info *ti, __u32 reason)
{
	if (cfg->flags & TG_CFG_F_STRICT_TUNNEL_PORTS)
		return tg_drop(ti, reason);
	ti->event = TG_EVENT_TUNNEL_PORT_PLAIN;
	return TG_TUN_LEAVE;
}

/* n bytes at p lie inside the outer UDP payload (checked besides c->end, which the verifier needs). */
static __always_inline int tg_in_payload(const struct tg_cursor *c, void *p, __u32 n,
					 const struct tg_tunnel_info *ti)
{
	return (__u64)(p - c->frame) + n <= ti->payload_end;
}

/* The UDP length bounds the tunnel payload, as udp_rcv() bounds what a socket receives: it must
 * cover the UDP header and fit in the IP datagram (else the stack drops the datagram itself).
 * c points at the UDP header; on success it points just past it. */
static __always_inline int tg_udp_payload(struct tg_cursor *c, const struct tg_config *cfg,
					  struct tg_tunnel_info *ti)
{
	struct udphdr *udp = c->pos;
	__u32 ulen;

	if ((void *)(udp + 1) > c->end)
		return tg_drop(ti, TG_REASON_DROP_TRUNCATED); /* parsed already: for the verifier */
	ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp))
		return tg_not_tunnel(cfg, ti, TG_REASON_DROP_MALFORMED);
	if ((__u64)((void *)udp - c->frame) + ulen > c->l3_end)
		return tg_not_tunnel(cfg, ti, TG_REASON_DROP_TRUNCATED);
	ti->payload_end = ((void *)udp - c->frame) + ulen;
	c->pos = udp + 1;
	return TG_TUN_DECAP;
}

/* The inner frame is parsed whole (Ethernet, VLAN tags, IP, L4 into *inner, which held the outer
 * packet's tuple until then: past this point the outer is not read again) before we promise a
 * decap, in the outer frame's bytes: it ends with the UDP payload. It must carry IP: only an IP
 * payload is judged by the ACL once stripped. Anything else (ARP, LLDP...) is left encapsulated,
 * to be handled as it would be without us: by a kernel VTEP, or refused at a closed UDP port,
 * never delivered bare to the underlay's neighbour table. */
static __always_inline int tg_tunnel_finish(struct tg_cursor *c, void *frame, struct tg_tunnel_info *ti,
					    struct tg_tuple *inner)
{
	struct tg_cursor ic = *c;
	struct ethhdr *eth;
	int proto, rc;

	if (c->pos + sizeof(struct ethhdr) > c->end || !tg_in_payload(c, c->pos, sizeof(struct ethhdr), ti))
		return tg_drop(ti, TG_REASON_DROP_TRUNCATED);
	ic.len = ti->payload_end; /* the inner frame ends with the UDP payload */
	proto = tg_parse_l2(&ic, &eth, TG_VLAN_MAX);
	if (proto < 0)
		return tg_drop(ti, tg_parse_reason(proto));
	if (!tg_is_ip(proto)) {
		ti->not_ip = 1;
		ti->event = TG_EVENT_TUNNEL_NOT_DECAPPED;
		return TG_TUN_LEAVE;
	}
	__builtin_memset(inner, 0, sizeof(*inner));
	rc = tg_parse_ip(&ic, proto, inner, TG_ENDS_AT_LEN);
	if (rc < 0)
		return tg_drop(ti, tg_parse_reason(rc));
	ti->outer_len = c->pos - frame;
	return TG_TUN_DECAP;
}

static __always_inline int tg_vxlan_inspect(struct tg_cursor *c, void *frame, const struct tg_config *cfg,
					    struct tg_tunnel_info *ti, struct tg_tuple *inner)
{
	struct tg_vxlanhdr *vx = c->pos;
	int rc;

	if ((void *)(vx + 1) > c->end || !tg_in_payload(c, vx, sizeof(*vx), ti))
		return tg_not_tunnel(cfg, ti, TG_REASON_DROP_TRUNCATED);
	if (!(vx->flags & TG_VXLAN_FLAG_I))
		return tg_not_tunnel(cfg, ti, TG_REASON_DROP_MALFORMED);
	ti->type = TG_TUNNEL_VXLAN;
	ti->vni = tg_vni(vx->vni);
	rc = tg_tunnel_admit(cfg, ti, TG_TUNNEL_F_VXLAN);
	if (rc != TG_TUN_DECAP)
		return rc;
	c->pos = vx + 1;
	return tg_tunnel_finish(c, frame, ti, inner);
}

/* Walks the options: any critical option is one we do not understand (we implement none). */
static __always_inline int tg_geneve_options(struct tg_cursor *c, __u32 opts_len, struct tg_tunnel_info *ti)
{
	void *opts = c->pos;
	__u32 off = 0;
	int i;

	if (opts + opts_len > c->end || !tg_in_payload(c, opts, opts_len, ti))
		return tg_drop(ti, TG_REASON_DROP_TRUNCATED);
	for (i = 0; i < TG_GENEVE_OPTS_MAX; i++) {
		struct tg_geneve_opt *opt;

		if (off >= opts_len || off >= TG_GENEVE_OPTS_MAX_LEN)
			break;
		opt = opts + off;
		if ((void *)(opt + 1) > c->end)
			return tg_drop(ti, TG_REASON_DROP_TRUNCATED);
		if (opt->type & TG_GENEVE_OPT_TYPE_CRITICAL)
			return tg_drop(ti, TG_REASON_DROP_GENEVE_CRITICAL);
		off += sizeof(*opt) + (opt->length & TG_GENEVE_OPT_LEN_MASK) * TG_GENEVE_OPT_UNIT;
	}
	/* The option lengths must add up to Opt Len exactly. */
	if (off != opts_len)
		return tg_drop(ti, TG_REASON_DROP_MALFORMED);
	c->pos = opts + opts_len;
	return TG_TUN_DECAP;
}

static __always_inline int tg_geneve_inspect(struct tg_cursor *c, void *frame, const struct tg_config *cfg,
					     struct tg_tunnel_info *ti, struct tg_tuple *inner)
{
	struct tg_genevehdr *gh = c->pos;
	__u32 opts_len;
	int rc;

	if ((void *)(gh + 1) > c->end || !tg_in_payload(c, gh, sizeof(*gh), ti))
		return tg_not_tunnel(cfg, ti, TG_REASON_DROP_TRUNCATED);
	/* Another version's header has another layout: no VNI to read (RFC 8926 3.4). */
	if (gh->ver_optlen >> TG_GENEVE_VERSION_SHIFT)
		return tg_not_tunnel(cfg, ti, TG_REASON_DROP_GENEVE_VERSION);
	ti->type = TG_TUNNEL_GENEVE;
	ti->vni = tg_vni(gh->vni);
	/* Control messages and non-Ethernet payloads are not ours to strip: leave them whole. */
	if ((gh->flags & TG_GENEVE_FLAG_O) || gh->proto != bpf_htons(TG_ETH_P_TEB)) {
		ti->event = TG_EVENT_TUNNEL_NOT_DECAPPED;
		return TG_TUN_LEAVE;
	}
	rc = tg_tunnel_admit(cfg, ti, TG_TUNNEL_F_GENEVE);
	if (rc != TG_TUN_DECAP)
		return rc;
	/* C set means a critical option is present, and we understand none (RFC 8926 3.5). */
	if (gh->flags & TG_GENEVE_FLAG_C)
		return tg_drop(ti, TG_REASON_DROP_GENEVE_CRITICAL);
	opts_len = (gh->ver_optlen & TG_GENEVE_OPTLEN_MASK) * TG_GENEVE_OPT_UNIT;
	c->pos = gh + 1;
	rc = tg_geneve_options(c, opts_len, ti);
	if (rc != TG_TUN_DECAP)
		return rc;
	return tg_tunnel_finish(c, frame, ti, inner);
}

/* Whether the outer packet `t` is addressed to a tunnel port, with tunnels terminated at all
 * (then c must point at its UDP header: see tg_tunnel_inspect). */
static __always_inline int tg_tunnel_port(const struct tg_tuple *t, const struct tg_config *cfg)
{
	__u16 dport = bpf_ntohs(t->dport);

	if (!(cfg->flags & TG_CFG_F_DECAP) || t->proto != IPPROTO_UDP || !t->l4_present)
		return 0;
	return dport == cfg->vxlan_port || dport == cfg->geneve_port;
}

/* c points at the outer UDP header of `t`, addressed to a tunnel port (tg_tunnel_port); a
 * fragmented datagram (t->fragment: this is its first fragment, it has ports) is left whole. On
 * TG_TUN_DECAP, *t is the inner packet's tuple (on TG_TUN_DROP, it may be half of it: the packet
 * is not judged then). */
static __always_inline int tg_tunnel_inspect(struct tg_cursor *c, struct tg_tuple *t,
					     const struct tg_config *cfg, struct tg_tunnel_info *ti)
{
	int rc;

	/* XDP sees one fragment, the tunnel header maybe not even whole: the stack reassembles. */
	if (t->fragment) {
		ti->fragment = 1;
		return TG_TUN_LEAVE;
	}
	rc = tg_udp_payload(c, cfg, ti);
	if (rc != TG_TUN_DECAP)
		return rc;
	if (bpf_ntohs(t->dport) == cfg->vxlan_port)
		return tg_vxlan_inspect(c, c->frame, cfg, ti, t);
	return tg_geneve_inspect(c, c->frame, cfg, ti, t);
}

#endif /* TG_TUNNEL_H */
