/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The judge stage, tail-called by the ingress entry for every IP packet it parsed (and
 * decapsulated), which it finds in the per-CPU scratch (struct tg_scratch): judge.h's verdict,
 * then for a packet a reject rule matched the reject stage (xdp_reject.c). A program of its own
 * so that the verifier checks the classifier's search once, from one state, whatever ways the
 * parse and the tunnel went. One exit: the packet's reason is counted here or by the reject stage.
 */
#include <uapi/linux/bpf.h>

#include "counters.h"
#include "judge.h"
#include "maps.h"
#include "match.h"
#include "tunnel.h"

int tg_xdp_judge(struct xdp_md *ctx)
{
	struct tg_scratch *s;
	struct tg_config *cfg;
	__u32 zero = 0, reason;

	cfg = config.lookup(&zero);
	s = tg_scratch_of(TG_HOOK_XDP);
	if (!cfg || !s) {
		reason = TG_REASON_DROP_DEFAULT; /* unreachable: arrays always have their entries */
		goto out;
	}
	reason = tg_judge(ctx, cfg, s); /* its searches mark themselves (match.h, tg_read_begin) */
	if (reason == TG_REASON_DROP_REJECTED) {
		/* Not answered when the tunnel stage judged it: a decapped packet's answer would need
		 * the tunnel around it, and a tunnel port's plain UDP is rare enough to be dropped
		 * like it (s->t is the outer packet when nothing was stripped). */
		if (!(s->meta_flags & TG_META_F_DECAPPED) && !tg_tunnel_port(&s->t, cfg))
			xdp_stages.call(ctx, TG_STAGE_REJECT); /* answers, and counts */
		tg_count_event(TG_EVENT_REJECT_UNANSWERED); /* decapped, or no reject stage loaded */
	}
out:
	return tg_xdp_exit(ctx, reason);
}
