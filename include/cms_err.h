/*
 * cms_err.h - the one error convention of the project.
 *
 * Every function that can fail returns 0 (CMS_OK) or one of the negative
 * codes below. A function that returns an error never calls its callback
 * (libuv's rule): the caller owns the clean-up in that case.
 */
#ifndef CMS_ERR_H
#define CMS_ERR_H

enum cms_err {
    CMS_OK = 0,
    CMS_EAGAIN = -1,    /* would block / need more input; try again later   */
    CMS_EPROTO = -2,    /* the peer violated the protocol (malformed input) */
    CMS_EPERM = -3,     /* the peer is not allowed to do this               */
    CMS_EINTERNAL = -4, /* our fault: a bug or an unexpected library error  */
    CMS_ENOMEM = -5,    /* allocation failed                                */
    CMS_ELIMIT = -6,    /* a configured limit was hit (size, count, queue)  */
    CMS_EINVAL = -7,    /* invalid argument or configuration                */
    CMS_EUNAVAIL = -8,  /* a dependency (the database) is unavailable       */
    CMS_ECLOSED = -9,   /* the object is closing or closed                  */
};

/* Short, static, human-readable name of an error code ("EPROTO"). */
const char *cms_strerror(int err);

#endif
