/* What serve.c needs from the connection layer. */
#ifndef MITOS_API_LISTENER_H
#define MITOS_API_LISTENER_H

#include <stdint.h>

int listener_conn_new(int fd);
unsigned listener_conn_count(void);
void listener_tick(uint64_t now_ms);
void listener_close_idle(void);
void listener_close_all(void);
/* After the ring is gone: frees connections whose operations never completed. */
void listener_free_zombies(void);

#endif
