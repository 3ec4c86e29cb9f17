/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kmessage trace events (docs/events.md, "Trace events")
 *
 *   kmessage_send	one send_kmessage() call and what came of it: sent,
 *			no_listener, undelivered, or the reason it was
 *			refused (invalid, too_long: object and signal are
 *			not recorded, as they may be NULL or a page long;
 *			alloc_failed)
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM kmessage

#if !defined(_KMESSAGE_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _KMESSAGE_TRACE_H

#include <linux/tracepoint.h>

TRACE_EVENT(kmessage_send,
	    TP_PROTO(int type, const char *object, const char *signal,
		     size_t len, const char *outcome),
	    TP_ARGS(type, object, signal, len, outcome),
	    TP_STRUCT__entry(__field(int, type)
			     __string(object, object)
			     __string(signal, signal)
			     __field(size_t, len)
			     __string(outcome, outcome)),
	    TP_fast_assign(__entry->type = type;
			   __assign_str(object);
			   __assign_str(signal);
			   __entry->len = len;
			   __assign_str(outcome);),
	    TP_printk("type=%d object=%s signal=%s len=%zu %s",
		      __entry->type, __get_str(object), __get_str(signal),
		      __entry->len, __get_str(outcome))
);

#endif /* _KMESSAGE_TRACE_H */

/* This part must be outside the include guard. */
#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE kmessage_trace
#include <trace/define_trace.h>
