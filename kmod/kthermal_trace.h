/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kevent_thermal trace events (docs/events.md, "Trace events")
 *
 * One event for each step a thermal interrupt takes from the hard-IRQ
 * handler to the netlink broadcast, so that a trace shows their order
 * across CPUs and the ordered workqueue:
 *
 *   thermal_interrupt	the handler starts, in hard IRQ
 *   thermal_rate_limit	its rate-limit decision, when the window is on
 *   thermal_uevent_queue	a uevent queued for the workqueue, or dropped
 *   thermal_uevent_send	the workqueue sent it (kobject_uevent_env())
 *   thermal_done		the caller's completion ran (fence, device ack)
 *
 * The kmessages an interrupt sends are kmessage:kmessage_send.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM kevent_thermal

#if !defined(_KTHERMAL_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _KTHERMAL_TRACE_H

#include <linux/tracepoint.h>

TRACE_EVENT(thermal_interrupt,
	    TP_PROTO(int cpu, long interrupt, u64 core, u64 burst),
	    TP_ARGS(cpu, interrupt, core, burst),
	    TP_STRUCT__entry(__field(int, cpu)
			     __field(long, interrupt)
			     __field(u64, core)
			     __field(u64, burst)),
	    TP_fast_assign(__entry->cpu = cpu;
			   __entry->interrupt = interrupt;
			   __entry->core = core;
			   __entry->burst = burst;),
	    TP_printk("cpu=%d interrupt=%ld therm_status=%#llx burst=%llu",
		      __entry->cpu, __entry->interrupt, __entry->core,
		      __entry->burst)
);

TRACE_EVENT(thermal_rate_limit,
	    TP_PROTO(int cpu, long interrupt, unsigned int window_ms,
		     s64 margin_ns, bool within_burst),
	    TP_ARGS(cpu, interrupt, window_ms, margin_ns, within_burst),
	    TP_STRUCT__entry(__field(int, cpu)
			     __field(long, interrupt)
			     __field(unsigned int, window_ms)
			     __field(s64, margin_ns)
			     __field(bool, within_burst)),
	    TP_fast_assign(__entry->cpu = cpu;
			   __entry->interrupt = interrupt;
			   __entry->window_ms = window_ms;
			   __entry->margin_ns = margin_ns;
			   __entry->within_burst = within_burst;),
	    TP_printk("cpu=%d interrupt=%ld window_ms=%u margin_ns=%lld within_burst=%d %s",
		      __entry->cpu, __entry->interrupt, __entry->window_ms,
		      __entry->margin_ns, __entry->within_burst,
		      __entry->margin_ns < 0 ? "limited" : "handled")
);

TRACE_EVENT(thermal_uevent_queue,
	    TP_PROTO(int cpu, const char *object, bool high, long count,
		     int pending, const char *outcome),
	    TP_ARGS(cpu, object, high, count, pending, outcome),
	    TP_STRUCT__entry(__field(int, cpu)
			     __string(object, object)
			     __field(bool, high)
			     __field(long, count)
			     __field(int, pending)
			     __string(outcome, outcome)),
	    TP_fast_assign(__entry->cpu = cpu;
			   __assign_str(object);
			   __entry->high = high;
			   __entry->count = count;
			   __entry->pending = pending;
			   __assign_str(outcome);),
	    TP_printk("cpu=%d object=%s signal=%s count=%ld pending=%d %s",
		      __entry->cpu, __get_str(object),
		      __entry->high ? "high" : "normal", __entry->count,
		      __entry->pending, __get_str(outcome))
);

TRACE_EVENT(thermal_uevent_send,
	    TP_PROTO(int cpu, const char *object, bool high, long count,
		     int ret),
	    TP_ARGS(cpu, object, high, count, ret),
	    TP_STRUCT__entry(__field(int, cpu)
			     __string(object, object)
			     __field(bool, high)
			     __field(long, count)
			     __field(int, ret)),
	    TP_fast_assign(__entry->cpu = cpu;
			   __assign_str(object);
			   __entry->high = high;
			   __entry->count = count;
			   __entry->ret = ret;),
	    TP_printk("cpu=%d object=%s signal=%s count=%ld ret=%d",
		      __entry->cpu, __get_str(object),
		      __entry->high ? "high" : "normal", __entry->count,
		      __entry->ret)
);

TRACE_EVENT(thermal_done,
	    TP_PROTO(unsigned int cpu, u64 token),
	    TP_ARGS(cpu, token),
	    TP_STRUCT__entry(__field(unsigned int, cpu)
			     __field(u64, token)),
	    TP_fast_assign(__entry->cpu = cpu;
			   __entry->token = token;),
	    TP_printk("cpu=%u token=%llu", __entry->cpu, __entry->token)
);

#endif /* _KTHERMAL_TRACE_H */

/* This part must be outside the include guard. */
#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE kthermal_trace
#include <trace/define_trace.h>
