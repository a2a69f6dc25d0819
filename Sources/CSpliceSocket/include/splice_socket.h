#ifndef SPLICE_SOCKET_H
#define SPLICE_SOCKET_H
#include <stdint.h>

/* The credentials of the process at the other end of a connected Unix-domain socket
 * (SO_PEERCRED: taken when it connected, not forgeable by it). struct ucred needs
 * _GNU_SOURCE, which Swift's Glibc module does not see. Returns 0, or -1 with errno. */
int splice_peer_credentials(int fd, uint32_t *uid, uint32_t *gid, int32_t *pid);

#endif
