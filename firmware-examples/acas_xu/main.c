/*
 * ACAS Xu advisory controller on libprorepair.a: the firmware shape of the C API.
 *
 * Reads raw sensor values (rho ft, theta rad, psi rad, v_own ft/s, v_int ft/s), from
 * argv (five numbers) or from stdin (one sample per line, numbers separated by spaces
 * or commas; blank lines and lines starting with '#' are skipped). Each sample is
 * clamped to the .nnet input bounds, normalised with the .nnet means and ranges,
 * evaluated by the device core, and printed as one line:
 *
 *   normalised=n0,n1,n2,n3,n4 scores=s0,s1,s2,s3,s4 advisory=K NAME
 *
 * where K/NAME is the advisory with the LOWEST score (ACAS Xu convention).
 *
 * Generated headers (never committed: they hold the network; see README.md):
 *   acasxu_model.h  prorepair-host compile N.nnet --out m.bin --c-array acasxu_model.h
 *                   (static const unsigned char acasxu_model[], acasxu_model_len)
 *   acasxu_norm.h   ACASXU_INPUT_MIN/MAX/MEAN/RANGE[5] from the .nnet file
 *
 * Memory: the model, the arena and every buffer are static; nothing is allocated.
 * Exit codes: 0 ok; 1 the library refused the model or an evaluation; 2 bad input.
 */
#include <math.h> /* isfinite (a macro: no libm needed) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acasxu_model.h"
#include "acasxu_norm.h"
#include "prorepair.h"

#define ACASXU_INPUTS 5
#define ACASXU_OUTPUTS 5

/* Scratch memory for evaluation; its size is checked against the model at start-up. */
#ifndef ACASXU_ARENA_CAPACITY
#define ACASXU_ARENA_CAPACITY 4096
#endif

static const char *const ADVISORY_NAMES[ACASXU_OUTPUTS] = {
    "COC", "weak left", "weak right", "strong left", "strong right",
};

static pr_model g_model; /* .bss: zeroed, so "not loaded" until pr_model_load */
static uint8_t g_arena[ACASXU_ARENA_CAPACITY] __attribute__((aligned(16)));

/* Load the embedded model and check it against this program's buffers. */
static int setup(void) {
    pr_status status = pr_model_load(acasxu_model, acasxu_model_len, &g_model);
    if (status != PR_OK) {
        fprintf(stderr, "acas_xu: cannot load the model: %s\n", pr_status_str(status));
        return 1;
    }
    size_t input_len = 0, output_len = 0, arena_bytes = 0;
    if ((status = pr_model_input_len(&g_model, &input_len)) != PR_OK ||
        (status = pr_model_output_len(&g_model, &output_len)) != PR_OK ||
        (status = pr_model_arena_bytes(&g_model, &arena_bytes)) != PR_OK) {
        fprintf(stderr, "acas_xu: cannot query the model: %s\n", pr_status_str(status));
        return 1;
    }
    if (input_len != ACASXU_INPUTS || output_len != ACASXU_OUTPUTS) {
        fprintf(stderr, "acas_xu: the model maps %zu inputs to %zu outputs, expected %d to %d\n",
                input_len, output_len, ACASXU_INPUTS, ACASXU_OUTPUTS);
        return 1;
    }
    if (arena_bytes > sizeof g_arena) {
        fprintf(stderr, "acas_xu: the model needs an arena of %zu bytes, this build has %zu "
                        "(rebuild with -DACASXU_ARENA_CAPACITY=%zu)\n",
                arena_bytes, sizeof g_arena, arena_bytes);
        return 1;
    }
    return 0;
}

/* Clamp each raw value to the .nnet bounds, then (x - mean) / range. */
static void normalise(const double raw[ACASXU_INPUTS], float out[ACASXU_INPUTS]) {
    for (int i = 0; i < ACASXU_INPUTS; i++) {
        double x = raw[i];
        if (x < ACASXU_INPUT_MIN[i]) x = ACASXU_INPUT_MIN[i];
        if (x > ACASXU_INPUT_MAX[i]) x = ACASXU_INPUT_MAX[i];
        out[i] = (float)((x - ACASXU_INPUT_MEAN[i]) / ACASXU_INPUT_RANGE[i]);
    }
}

/* Index of the lowest score (the first one on ties). */
static int advisory(const float scores[ACASXU_OUTPUTS]) {
    int best = 0;
    for (int i = 1; i < ACASXU_OUTPUTS; i++) {
        if (scores[i] < scores[best]) best = i;
    }
    return best;
}

/* Evaluate one raw sample and print its line; 0 or 1 (library error). */
static int advise(const double raw[ACASXU_INPUTS]) {
    float input[ACASXU_INPUTS];
    float scores[ACASXU_OUTPUTS];
    normalise(raw, input);
    pr_status status = pr_model_evaluate(&g_model, input, ACASXU_INPUTS, g_arena, sizeof g_arena,
                                         scores, ACASXU_OUTPUTS);
    if (status != PR_OK) {
        fprintf(stderr, "acas_xu: evaluation failed: %s\n", pr_status_str(status));
        return 1;
    }
    int k = advisory(scores);
    printf("normalised=%.9g,%.9g,%.9g,%.9g,%.9g scores=%.9g,%.9g,%.9g,%.9g,%.9g advisory=%d %s\n",
           input[0], input[1], input[2], input[3], input[4], scores[0], scores[1], scores[2],
           scores[3], scores[4], k, ADVISORY_NAMES[k]);
    return 0;
}

/* Parse exactly five finite numbers separated by spaces, tabs or commas. */
static int parse_sample(const char *text, double raw[ACASXU_INPUTS]) {
    const char *p = text;
    for (int i = 0; i < ACASXU_INPUTS; i++) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        char *end = NULL;
        raw[i] = strtod(p, &end);
        if (end == p || !isfinite(raw[i])) return -1;
        p = end;
    }
    while (*p == ' ' || *p == '\t' || *p == ',' || *p == '\r' || *p == '\n') p++;
    return *p == '\0' ? 0 : -1;
}

int main(int argc, char **argv) {
    if (setup() != 0) return 1;
    double raw[ACASXU_INPUTS];
    if (argc == 1 + ACASXU_INPUTS) {
        char line[512] = "";
        for (int i = 1; i < argc; i++) {
            if (strlen(line) + strlen(argv[i]) + 2 > sizeof line) {
                fprintf(stderr, "acas_xu: arguments too long\n");
                return 2;
            }
            strcat(line, argv[i]);
            strcat(line, " ");
        }
        if (parse_sample(line, raw) != 0) {
            fprintf(stderr, "acas_xu: expected five numbers: rho theta psi v_own v_int\n");
            return 2;
        }
        return advise(raw);
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [rho theta psi v_own v_int]   (or samples on stdin)\n",
                argv[0]);
        return 2;
    }
    char line[512];
    unsigned long line_number = 0;
    while (fgets(line, sizeof line, stdin) != NULL) {
        line_number++;
        const char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '#' || *p == '\n' || *p == '\r' || *p == '\0') continue;
        if (parse_sample(p, raw) != 0) {
            fprintf(stderr, "acas_xu: stdin line %lu: expected five numbers: "
                            "rho theta psi v_own v_int\n", line_number);
            return 2;
        }
        if (advise(raw) != 0) return 1;
    }
    return 0;
}
