/*
 * The examples' status check: 0 when a C API call returned what was expected, else 1
 * after printing both statuses with pr_status_str to stderr.
 */
#ifndef PROREPAIR_EXAMPLES_EXPECT_H
#define PROREPAIR_EXAMPLES_EXPECT_H

#include <stdio.h>

#include "prorepair.h"

static int expect(enum pr_status got, enum pr_status want, const char *what) {
    if (got != want) {
        fprintf(stderr, "%s: got %d (%s), want %d (%s)\n", what, (int)got,
                pr_status_str((int)got), (int)want, pr_status_str((int)want));
        return 1;
    }
    return 0;
}

#endif /* PROREPAIR_EXAMPLES_EXPECT_H */
