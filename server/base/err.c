/* err.c - names of the project's error codes (see cms_err.h). */
#include "cms_err.h"

const char *cms_strerror(int err)
{
    switch (err) {
    case CMS_OK: return "OK";
    case CMS_EAGAIN: return "EAGAIN";
    case CMS_EPROTO: return "EPROTO";
    case CMS_EPERM: return "EPERM";
    case CMS_EINTERNAL: return "EINTERNAL";
    case CMS_ENOMEM: return "ENOMEM";
    case CMS_ELIMIT: return "ELIMIT";
    case CMS_EINVAL: return "EINVAL";
    case CMS_EUNAVAIL: return "EUNAVAIL";
    case CMS_ECLOSED: return "ECLOSED";
    default: return "EUNKNOWN";
    }
}
