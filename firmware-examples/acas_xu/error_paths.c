/*
 * Error paths of the C API, from C: each damaged blob or bad argument gives its own
 * status and status string, and out-parameters (the pr_model, the output buffer) are
 * left untouched. Uses the embedded ACAS Xu model (acasxu_model.h, generated) as the
 * intact blob and damages static copies of it. Prints one line per check; exit code 0
 * when every check passes, 1 otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "acasxu_model.h"
#include "prorepair.h"

/* Room for the blob plus one byte (the misaligned copy), 16-byte aligned. */
#define BLOB_CAPACITY (sizeof acasxu_model + 16)
static uint8_t g_copy[BLOB_CAPACITY] __attribute__((aligned(16)));
static uint8_t g_arena[4096] __attribute__((aligned(16)));
static int g_failures = 0;

static const float UNTOUCHED = -12345.5f;

static void check(int ok, const char *what, pr_status status) {
    printf("%s: %s: %s\n", ok ? "ok" : "FAIL", what, pr_status_str(status));
    if (!ok) g_failures++;
}

/* CRC-32/ISO-HDLC (zlib) of bytes 0..12 and 16..len, stored at byte 12 (blob format). */
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return crc;
}

static void fix_crc(uint8_t *blob, size_t len) {
    uint32_t crc = crc32_update(0xFFFFFFFFu, blob, 12);
    crc = crc32_update(crc, blob + 16, len - 16) ^ 0xFFFFFFFFu;
    for (int k = 0; k < 4; k++) blob[12 + k] = (uint8_t)(crc >> (8 * k));
}

static void fresh_copy(void) {
    memset(g_copy, 0, sizeof g_copy);
    memcpy(g_copy, acasxu_model, acasxu_model_len);
}

/* Load `len` bytes at `blob` into a model pre-filled with 0xA5; expect `want`, the text
 * `want_text`, and (on failure) the model untouched. */
static void expect_load(const char *what, const uint8_t *blob, size_t len, pr_status want,
                        const char *want_text) {
    pr_model model;
    uint8_t before[sizeof model];
    memset(&model, 0xA5, sizeof model);
    memcpy(before, &model, sizeof model);
    pr_status status = pr_model_load(blob, len, &model);
    int ok = status == want && strcmp(pr_status_str(status), want_text) == 0;
    if (want != PR_OK) ok = ok && memcmp(before, &model, sizeof model) == 0;
    check(ok, what, status);
}

int main(void) {
    /* The intact blob loads. */
    expect_load("intact blob", acasxu_model, acasxu_model_len, PR_OK, "ok");

    /* Damaged blobs: each its own status and text. */
    fresh_copy();
    expect_load("truncated by one byte", g_copy, acasxu_model_len - 1, PR_TRUNCATED,
                "truncated: shorter than its header or declared length");
    expect_load("truncated to 10 bytes", g_copy, 10, PR_TRUNCATED,
                "truncated: shorter than its header or declared length");
    expect_load("trailing byte", g_copy, acasxu_model_len + 1, PR_LENGTH_MISMATCH,
                "length mismatch: trailing bytes after the declared length");

    fresh_copy();
    g_copy[acasxu_model_len - 40] ^= 0x10; /* a bit of a parameter */
    expect_load("bit-flipped weight", g_copy, acasxu_model_len, PR_CRC_MISMATCH,
                "CRC mismatch: the blob is corrupted");

    fresh_copy();
    g_copy[0] = 'X';
    expect_load("bad magic", g_copy, acasxu_model_len, PR_BAD_MAGIC,
                "bad magic: not a prorepair model blob");

    fresh_copy();
    g_copy[4] = 99; /* format version 99 */
    fix_crc(g_copy, acasxu_model_len);
    expect_load("wrong version", g_copy, acasxu_model_len, PR_UNSUPPORTED_VERSION,
                "unsupported format version");

    fresh_copy();
    /* Last input dimension 6 instead of 5: the first layer no longer fits. */
    g_copy[20 + 4 * (g_copy[16] - 1)] = 6;
    fix_crc(g_copy, acasxu_model_len);
    expect_load("wrong input shape", g_copy, acasxu_model_len, PR_SHAPE_MISMATCH,
                "shape mismatch between consecutive layers");

    memset(g_copy, 0, sizeof g_copy);
    memcpy(g_copy + 1, acasxu_model, acasxu_model_len);
    expect_load("misaligned blob", g_copy + 1, acasxu_model_len, PR_MISALIGNED_BLOB,
                "misaligned buffer: the blob must start at a 4-byte aligned address");

    expect_load("NULL blob", NULL, acasxu_model_len, PR_NULL_POINTER, "null pointer argument");
    {
        pr_status status = pr_model_load(acasxu_model, acasxu_model_len, NULL);
        check(status == PR_NULL_POINTER, "NULL model", status);
    }

    /* Evaluation arguments: the output stays untouched on every failure. */
    pr_model model;
    pr_status status = pr_model_load(acasxu_model, acasxu_model_len, &model);
    check(status == PR_OK, "load for evaluation", status);
    size_t arena_bytes = 0;
    status = pr_model_arena_bytes(&model, &arena_bytes);
    check(status == PR_OK && arena_bytes > 0 && arena_bytes <= sizeof g_arena, "arena size", status);

    const float input[5] = {0.1f, -0.2f, 0.3f, 0.25f, -0.25f};
    float output[5];
    struct {
        const char *what;
        const pr_model *model;
        size_t input_len, arena_len, output_len;
        pr_status want;
    } cases[] = {
        {"evaluate: NULL model", NULL, 5, arena_bytes, 5, PR_NULL_POINTER},
        {"evaluate: input length 4", &model, 4, arena_bytes, 5, PR_INPUT_LENGTH},
        {"evaluate: output length 6", &model, 5, arena_bytes, 6, PR_OUTPUT_LENGTH},
        {"evaluate: arena one byte short", &model, 5, arena_bytes - 1, 5, PR_ARENA_TOO_SMALL},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int i = 0; i < 5; i++) output[i] = UNTOUCHED;
        float big_output[6] = {UNTOUCHED, UNTOUCHED, UNTOUCHED, UNTOUCHED, UNTOUCHED, UNTOUCHED};
        float *out = cases[c].output_len == 6 ? big_output : output;
        status = pr_model_evaluate(cases[c].model, input, cases[c].input_len, g_arena,
                                   cases[c].arena_len, out, cases[c].output_len);
        int untouched = 1;
        for (size_t i = 0; i < cases[c].output_len; i++) untouched &= out[i] == UNTOUCHED;
        check(status == cases[c].want && untouched, cases[c].what, status);
    }
    {
        pr_model zeroed = {0};
        for (int i = 0; i < 5; i++) output[i] = UNTOUCHED;
        status = pr_model_evaluate(&zeroed, input, 5, g_arena, arena_bytes, output, 5);
        check(status == PR_MODEL_NOT_LOADED && output[0] == UNTOUCHED, "evaluate: zeroed model",
              status);
        status = pr_model_evaluate(&model, input, 5, g_arena + 1, arena_bytes, output, 5);
        check(status == PR_MISALIGNED_ARENA && output[0] == UNTOUCHED,
              "evaluate: misaligned arena", status);
        status = pr_model_evaluate(&model, input, 5, g_arena, arena_bytes, (float *)g_arena, 5);
        check(status == PR_OVERLAPPING_BUFFERS, "evaluate: output inside the arena", status);
    }

    /* A copy of the struct is the same model; evaluation succeeds and is deterministic. */
    {
        pr_model copy = model;
        float again[5];
        status = pr_model_evaluate(&model, input, 5, g_arena, arena_bytes, output, 5);
        pr_status status2 = pr_model_evaluate(&copy, input, 5, g_arena, arena_bytes, again, 5);
        check(status == PR_OK && status2 == PR_OK && memcmp(output, again, sizeof output) == 0,
              "evaluate: copied model agrees", status2);
    }

    /* Status strings: static, never NULL, "unknown status code" for unknown values. */
    check(strcmp(pr_status_str(12345), "unknown status code") == 0, "unknown status value",
          PR_OK);
    check(strcmp(pr_status_str(-1), "unknown status code") == 0, "negative status value",
          PR_OK);
    check(pr_version() != NULL && pr_version()[0] != '\0', "version string", PR_OK);

    printf("%d failure(s)\n", g_failures);
    return g_failures == 0 ? 0 : 1;
}
