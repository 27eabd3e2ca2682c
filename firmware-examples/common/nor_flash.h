/*
 * A simulated NOR flash with two patch slots and two commit records for the OTA
 * examples: erase sets every byte to 0xFF, a write only clears bits, and the operation
 * numbered `fail_at` loses power half way (it is torn, and every access fails until
 * the "reboot" clears `dead`). Driven through pr_storage callbacks.
 *
 * Include once per program, after prorepair.h, with SLOT_BYTES defined.
 */
#ifndef PROREPAIR_EXAMPLES_NOR_FLASH_H
#define PROREPAIR_EXAMPLES_NOR_FLASH_H

#include <stdint.h>
#include <string.h>

#include "prorepair.h"

#ifndef SLOT_BYTES
#error "define SLOT_BYTES before including nor_flash.h"
#endif

struct flash {
    uint8_t slot[2][SLOT_BYTES];
    uint8_t record[2][PR_OTA_RECORD_SIZE];
    int steps;     /* erase/write operations so far */
    int fail_at;   /* the operation that loses power (-1: never) */
    int dead;      /* power lost: every access fails until reboot */
};

static struct flash g_flash;

static uint8_t *area_ptr(struct flash *f, enum pr_area area, size_t *len) {
    switch (area) {
    case PR_AREA_SLOT_A: *len = SLOT_BYTES; return f->slot[0];
    case PR_AREA_SLOT_B: *len = SLOT_BYTES; return f->slot[1];
    case PR_AREA_RECORD_A: *len = PR_OTA_RECORD_SIZE; return f->record[0];
    case PR_AREA_RECORD_B: *len = PR_OTA_RECORD_SIZE; return f->record[1];
    }
    *len = 0;
    return NULL;
}

/* Count an operation; 1 when it is the one that loses power (it is then torn). */
static int power_lost_now(struct flash *f) {
    return f->steps++ == f->fail_at;
}

static int flash_read(void *ctx, enum pr_area area, size_t offset, uint8_t *buf, size_t len) {
    struct flash *f = ctx;
    size_t n;
    uint8_t *p = area_ptr(f, area, &n);
    if (f->dead || p == NULL || offset > n || len > n - offset) return -1;
    memcpy(buf, p + offset, len);
    return 0;
}

static int flash_erase(void *ctx, enum pr_area area) {
    struct flash *f = ctx;
    size_t n;
    uint8_t *p = area_ptr(f, area, &n);
    if (f->dead || p == NULL) return -1;
    if (power_lost_now(f)) {
        memset(p, 0xFF, n / 2);
        f->dead = 1;
        return -1;
    }
    memset(p, 0xFF, n);
    return 0;
}

static int flash_write(void *ctx, enum pr_area area, size_t offset, const uint8_t *data, size_t len) {
    struct flash *f = ctx;
    size_t n;
    uint8_t *p = area_ptr(f, area, &n);
    if (f->dead || p == NULL || offset > n || len > n - offset) return -1;
    size_t todo = len;
    int lost = power_lost_now(f);
    if (lost) todo = len / 2;
    for (size_t i = 0; i < todo; ++i) p[offset + i] &= data[i]; /* NOR: clear bits only */
    if (lost) {
        f->dead = 1;
        return -1;
    }
    return 0;
}

static void flash_init(struct flash *f) {
    memset(f, 0xFF, sizeof *f);
    f->steps = 0;
    f->fail_at = -1;
    f->dead = 0;
}

#endif /* PROREPAIR_EXAMPLES_NOR_FLASH_H */
