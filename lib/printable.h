/* Text an untrusted peer wrote (a sandbox's agent, a guest's console, a VMM that may be
 * the guest's) goes into serve's log and into clients' error messages: only printable
 * ASCII, so it can neither forge a log line nor smuggle terminal escapes. */
#ifndef MITOS_PRINTABLE_H
#define MITOS_PRINTABLE_H

#include <stddef.h>

/* Copies at most n bytes of in (stopping early at a NUL) into out, at most outlen - 1 of
 * them, then a NUL: a byte outside 0x20..0x7e becomes '?', except '\n', which becomes
 * newline when that is not 0 (the lines of a log tail joined on one line). out may be
 * in (made printable in place). Returns the length of out. */
size_t printable_copy(char *out, size_t outlen, const void *in, size_t n, char newline);

#endif
