/*
 * log.h - structured log lines on stderr.
 *
 * One line per event, logfmt style by default, so that both people and tools read it:
 *   ts=2026-11-28T06:14:54.123Z level=warn event=tls_refused device=MON-0001 peer=127.0.0.1:50312 msg="certificate has expired"
 * Values containing spaces or quotes are quoted and escaped. With
 * log_format = json (log_set_format) the same fields as one JSON object:
 *   {"ts":"2026-11-28T06:14:54.123Z","level":"warn","event":"tls_refused","device":"MON-0001","peer":"127.0.0.1:50312","msg":"certificate has expired"}
 * (strings escaped per RFC 8259; bytes that are not UTF-8 become U+FFFD).
 * Never pass key material or patient data other than identifiers to these
 * functions.
 *
 * Thread: any thread; each line is written with a single write(2).
 */
#ifndef CMS_LOG_H
#define CMS_LOG_H

#include <stdarg.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };

/* Sets the minimum level written (default LOG_INFO). Any thread (a reload). */
void log_set_level(enum log_level level);
/* Parses "debug"/"info"/"warn"/"error"; returns 0 or CMS_EINVAL. */
int log_level_parse(const char *s, enum log_level *out);
/* Sets the line format (default LOG_FORMAT_TEXT). Any thread (a reload). */
void log_set_format(enum log_format format);
/* Parses "text"/"json"; returns 0 or CMS_EINVAL. */
int log_format_parse(const char *s, enum log_format *out);

/*
 * Writes one line. event: short snake_case event name (required).
 * device, peer: may be NULL (omitted from the line). fmt: printf-style
 * free text, becomes msg="...". All pointers are borrowed.
 */
void log_event(enum log_level level, const char *event, const char *device, const char *peer,
               const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void log_eventv(enum log_level level, const char *event, const char *device, const char *peer,
                const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

#define log_info(ev, dev, peer, ...) log_event(LOG_INFO, ev, dev, peer, __VA_ARGS__)
#define log_warn(ev, dev, peer, ...) log_event(LOG_WARN, ev, dev, peer, __VA_ARGS__)
#define log_error(ev, dev, peer, ...) log_event(LOG_ERROR, ev, dev, peer, __VA_ARGS__)
#define log_debug(ev, dev, peer, ...) log_event(LOG_DEBUG, ev, dev, peer, __VA_ARGS__)

#endif
