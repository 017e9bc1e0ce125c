/* http_int.h - helpers shared by the http module's files (not a public API). */
#ifndef CMS_HTTP_INT_H
#define CMS_HTTP_INT_H

#include <stdbool.h>
#include <stddef.h>

/* ASCII lower case of ch (other bytes unchanged). */
int http__ascii_lower(int ch);
/* Length of the valid UTF-8 sequence at s (n bytes available), 0 if invalid. */
size_t http__utf8_seq_len(const unsigned char *s, size_t n);
/* s is a non-empty RFC 9110 token. */
bool http__is_token(const char *s);
/* s holds only field-value text (no CR, LF, NUL or other controls but TAB). */
bool http__is_field_text(const char *s);

#endif
