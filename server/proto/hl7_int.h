/* hl7_int.h - helpers shared by the hl7 module's files (not a public API). */
#ifndef CMS_HL7_INT_H
#define CMS_HL7_INT_H

#include "hl7.h"

/* |^~\& : what hl7_parse() starts from, and what hl7_unescape(NULL, ...) and
 * hl7_escape(NULL, ...) use (hl7.c). */
extern const hl7_delims hl7__std_delims;

/*
 * A control character that no HL7 text may carry: below 0x20 except TAB,
 * and DEL. hl7_parse() refuses them (CR and LF are segment ends there);
 * hl7_escape() replaces them by a space, so its output always parses.
 */
static inline int hl7__is_ctl(unsigned char ch)
{
    return (ch < 0x20 && ch != '\t') || ch == 0x7F;
}

#endif
