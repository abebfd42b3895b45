/* Host-port forwards of sandbox ports (POST /v1/sandboxes/{id}/forward). */
#ifndef MITOS_API_FORWARD_H
#define MITOS_API_FORWARD_H

/* After the event loop has stopped, before sandboxes and agent connections go:
 * closes every listener and bridged connection (no callback runs any more). */
void forward_exit(void);

#endif
