/* ulpt-llama.c -- libulpt prompts served and tuned inside llama.cpp, for any GGUF model
 * llama.cpp loads that accepts embedding input.
 *
 *     ulpt-llama identity --gguf M.gguf [--prompt P.ulpt]
 *     ulpt-llama tokenize --gguf M.gguf [--chat] DATA.jsonl
 *     ulpt-llama quantize IN.gguf OUT.gguf TYPE
 *     ulpt-llama tune     --gguf M.gguf --train T.jsonl [--test X.jsonl] --save P.ulpt
 *     ulpt-llama serve    --gguf M.gguf [--prompt P.ulpt] --test X.jsonl
 *     ulpt-llama tenants  --gguf M.gguf PROMPTDIR TASKROOT
 *     ulpt-llama check    --gguf M.gguf --tlm M.tlm
 *
 * The engine (engine.h) puts a prompt's rows between BOS and the text and scores labels;
 * users' data is read by data.c and made into sequences by inputs.c.  docs/LLAMA.md walks
 * through it.  Errors: one line on stderr, exit status 1 (2 for usage). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"
#include "host.h"
#include "ulpt.h"

static const char usage_text[] =
    "usage: ulpt-llama COMMAND [options] [ARGS]\n"
    "commands:\n"
    "  identity  what a prompt for this model records (and, with --prompt, whether that\n"
    "            prompt was trained against it)\n"
    "  tokenize  DATA: the model's token ids of each example's text, one line each\n"
    "  quantize  IN.gguf OUT.gguf TYPE: llama.cpp's quantization (Q8_0, Q4_K_M, Q4_0, ...)\n"
    "  tune      tune a prompt inside llama.cpp (forward passes only)\n"
    "  serve     a prompt's (or no prompt's) test accuracy through llama.cpp\n"
    "  tenants   PROMPTDIR TASKROOT: every prompt of PROMPTDIR served at once\n"
    "  check     tinylm converted to GGUF against tinylm's C forward (--tlm)\n"
    "data (tune, serve): --train/--valid/--test FILE.jsonl or FILE.tsv (docs/LLAMA.md), or\n"
    "  a tinylm task directory TASKDIR as the argument\n"
    "options:\n"
    "  --gguf PATH      the model (required, but for quantize)\n"
    "  --prompt PATH    a prompt file (serve, identity)\n"
    "  --labels A,B,..  the label set (default: the prompt's, else read from the data)\n"
    "  --sep TEXT       written after each text, before the label (default a line break)\n"
    "  --chat           the text as the user message of the model's chat template instead\n"
    "  --ctx N          cells per sequence (default the trained context, at most 512)\n"
    "  --scores PATH    serve: every test example's label scores as JSON lines\n"
    "  --tlm PATH       the model as tinylm weights, for tinylm's C forward (check, serve)\n"
    "  --gelu-zero-gguf PATH  check: also compare the variant convert.py --gelu-zero wrote\n"
    "  --batch B        sequences decoded together (default 8; tune: 32)\n"
    "  --requests N     tenants: requests to serve (default 512)\n"
    "  --save PATH      tune: write the tuned prompt there\n"
    "  --steps S        tune: steps (default 600); --examples M examples a step (16)\n"
    "  --method NAME    tune: first-order or forward-only (default: the first usable)\n"
    "  --directions Q   tune: random directions a step, 2Q perturbed prompts (default 1)\n"
    "  --mu EPS         tune: perturbation size (default 0.01); --lr LR AdamW peak rate (0.05)\n"
    "  --tokens N, --rank R, --seed K   tune: the prompt's shape and seed (16, 2, 1)\n"
    "  --threads T      llama.cpp threads (default: one per CPU)\n"
    "  --json           one JSON line of results\n"
    "  --verbose        llama.cpp's own log on stderr\n"
    "environment:\n"
    "  OMP_WAIT_POLICY=passive  llama.cpp's CPU threads are OpenMP threads, which spin while\n"
    "                   idle; on cores shared with other work set this, or use --threads 1\n";

/* 0, 2 (usage; reported) or exits after --help. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){ .requests = 512, .steps = 600, .seed = 1, .tokens = 16, .rank = 2,
                    .lr = 0.05, .mu = 1e-2, .examples = 16, .directions = 1 };
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        exit(argc < 2 ? 2 : 0);
    }
    o->cmd = argv[1];
    const cli_option table[] = {
        { "--gguf", CLI_STRING, &o->gguf, 0, 0 },
        { "--tlm", CLI_STRING, &o->tlm, 0, 0 },
        { "--gelu-zero-gguf", CLI_STRING, &o->gelu_zero_gguf, 0, 0 },
        { "--prompt", CLI_STRING, &o->prompt, 0, 0 },
        { "--save", CLI_STRING, &o->save, 0, 0 },
        { "--train", CLI_STRING, &o->train, 0, 0 },
        { "--valid", CLI_STRING, &o->valid, 0, 0 },
        { "--test", CLI_STRING, &o->test, 0, 0 },
        { "--labels", CLI_STRING, &o->labels, 0, 0 },
        { "--sep", CLI_STRING, &o->sep, 0, 0 },
        { "--scores", CLI_STRING, &o->scores, 0, 0 },
        { "--method", CLI_STRING, &o->method, 0, 0 },
        { "--chat", CLI_FLAG, &o->chat, 0, 0 },
        { "--json", CLI_FLAG, &o->json, 0, 0 },
        { "--verbose", CLI_FLAG, &o->verbose, 0, 0 },
        { "--batch", CLI_U32, &o->batch, 1, 256 },
        { "--threads", CLI_U32, &o->threads, 1, 256 },
        { "--ctx", CLI_U32, &o->ctx, 2, 1u << 20 },
        { "--requests", CLI_U32, &o->requests, 1, 1000000 },
        { "--steps", CLI_U32, &o->steps, 1, 1000000 },
        { "--examples", CLI_U32, &o->examples, 1, 4096 },
        { "--directions", CLI_U32, &o->directions, 1, 1024 },
        { "--seed", CLI_U32, &o->seed, 0, UINT32_MAX },
        { "--tokens", CLI_U32, &o->tokens, 1, 4096 },
        { "--rank", CLI_U32, &o->rank, 1, 4096 },
        { "--lr", CLI_REAL, &o->lr, 0, 0 },
        { "--mu", CLI_REAL, &o->mu, 0, 0 },
        { NULL, CLI_FLAG, NULL, 0, 0 },
    };
    int rc = cli_parse(argc - 1, argv + 1, table, o->args, 3, &o->n_args);
    if (rc == 3) {
        fputs(usage_text, stdout);
        exit(0);
    }
    if (rc)
        return 2;
    if (!o->gguf && strcmp(o->cmd, "quantize"))
        return fail("%s: --gguf MODEL.gguf is required", o->cmd) + 1;
    if (o->sep && strlen(o->sep) >= sizeof ((text_format *)0)->sep)
        return fail("--sep is longer than 255 bytes") + 1;
    if (!o->batch)
        o->batch = !strcmp(o->cmd, "tune") ? 32 : 8;
    return 0;
}

int open_engine(const options *o, uint32_t max_seqs, engine **e)
{
    engine_options eo = ENGINE_OPTIONS_INIT;
    eo.max_seqs = (int)max_seqs;
    eo.n_ctx = o->ctx;
    eo.n_threads = (int)o->threads;
    eo.verbose = o->verbose;
    return engine_open(e, o->gguf, &eo) ? fail("%s", engine_error()) : 0;
}

/* ---- identity, tokenize, quantize -------------------------------------------------- */

static void print_identity(const engine *e, int as_json)
{
    const engine_identity *id = engine_identity_of(e);
    if (as_json)
        printf("{\"arch\": \"%s\", \"n_embd\": %u, \"n_vocab\": %u, \"vocab\": \"%s\", "
               "\"weights\": \"%s\", \"n_ctx_train\": %u, \"adds_bos\": %d, \"name\": ",
               id->arch, id->n_embd, id->n_vocab, id->vocab, id->weights, id->n_ctx_train,
               engine_adds_bos(e));
    else
        printf("model.arch %s\nmodel.n_embd %u\nmodel.n_vocab %u\nmodel.vocab %s\n"
               "model.weights %s\ncontext %u, BOS %s\nmodel ", id->arch, id->n_embd,
               id->n_vocab, id->vocab, id->weights, id->n_ctx_train,
               engine_adds_bos(e) ? "added" : "not added");
    putchar('"');
    for (const char *c = id->name; *c; c++) /* the name is the file's: escape it */
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if ((unsigned char)*c < 0x20)
            printf("\\u%04x", (unsigned char)*c);
        else
            putchar(*c);
    puts(as_json ? "\"}" : "\"");
}

static int cmd_identity(const options *o)
{
    engine *e = NULL;
    ulpt_prompt *p = NULL;
    int rc = 1;
    char note[1024];
    if (open_engine(o, 1, &e))
        return 1;
    if (o->prompt) {
        TRY(ulpt_prompt_load(&p, o->prompt));
        if (engine_identity_check(e, p, o->prompt, note, sizeof note)) {
            rc = fail("%s", engine_error());
            goto out;
        }
        if (!o->json)
            printf("%s: trained against this model%s%s\n", o->prompt, note[0] ? "; " : "",
                   note);
    }
    print_identity(e, o->json);
    rc = 0;
out:
    ulpt_prompt_free(p);
    engine_free(e);
    return rc;
}

static int cmd_tokenize(const options *o)
{
    if (o->n_args != 1)
        return fail("tokenize: usage: ulpt-llama tokenize --gguf M.gguf [--chat] DATA");
    engine *e = NULL;
    data_split s = { 0 };
    data_labels any = { 0 };
    char err[4608];
    if (data_load(&s, o->args[0], &any, 1, err, sizeof err))
        return fail("%s", err);
    int rc = open_engine(o, 1, &e);
    for (size_t i = 0; !rc && i < s.n; i++) {
        int32_t *ids;
        uint32_t n;
        if (engine_tokenize(e, s.ex[i].text, s.ex[i].len, o->chat, &ids, &n)) {
            rc = fail("%s:%u: %s", s.path, s.ex[i].line, engine_error());
            break;
        }
        for (uint32_t k = 0; k < n; k++)
            printf(k ? " %d" : "%d", ids[k]);
        putchar('\n');
        free(ids);
    }
    data_free(&s);
    data_labels_free(&any);
    engine_free(e);
    return rc;
}

static int cmd_quantize(const options *o)
{
    if (o->n_args != 3)
        return fail("quantize: usage: ulpt-llama quantize IN.gguf OUT.gguf TYPE");
    if (engine_quantize(o->args[0], o->args[1], o->args[2], (int)o->threads))
        return fail("%s", engine_error());
    if (!o->json)
        printf("wrote %s: %s as %s\n", o->args[1], o->args[0], o->args[2]);
    return 0;
}

/* ---- serve ------------------------------------------------------------------------- */

typedef struct {
    engine *e;
    ulpt_prompt *p;
    float *E;
    uint32_t n_rows;
    text_format fmt;
    label_set labels;
    data_split test;
    task_set set;
    double *scores, *ref, seconds;
    char note[1024];
} serving;

/* The model, the prompt (checked against the model), the layout, labels and test data. */
static int serve_load(const options *o, serving *s)
{
    int rc = 1;
    data_labels names = { 0 };
    char err[512];
    snprintf(s->fmt.sep, sizeof s->fmt.sep, "%s", o->sep ? o->sep : "\n");
    s->fmt.chat = o->chat;
    if (open_engine(o, o->batch, &s->e))
        return 1;
    if (o->labels && data_labels_parse(&names, o->labels, ',', err, sizeof err))
        return fail("--labels: %s", err);
    if (o->prompt) {
        TRY(ulpt_prompt_load(&s->p, o->prompt));
        if (engine_identity_check(s->e, s->p, o->prompt, s->note, sizeof s->note)) {
            rc = fail("%s", engine_error());
            goto out;
        }
        if (format_from_prompt(s->p, &s->fmt, &names))
            goto out;
        s->n_rows = ulpt_prompt_n_tokens(s->p);
        const size_t C = engine_identity_of(s->e)->n_embd;
        if (!(s->E = malloc(sizeof(float) * s->n_rows * C))) {
            rc = fail("out of memory");
            goto out;
        }
        /* E is materialised once and shared by every request for this prompt */
        TRY(ulpt_prompt_forward(s->p, s->E, C));
    }
    if (task_load(o->n_args ? o->args[0] : NULL, o, &names, &s->fmt, NULL, NULL, &s->test))
        goto out;
    if (!s->test.n) {
        rc = fail("serve: --test FILE (or a task directory) is needed");
        goto out;
    }
    if (labels_prepare(s->e, &names, &s->labels) ||
        task_set_prepare(s->e, &s->test, &s->fmt, s->n_rows, &s->labels, &s->set))
        goto out;
    rc = 0;
out:
    data_labels_free(&names);
    return rc;
}

/* Scores of every test example, o->batch sequences per decode. */
static int serve_run(const options *o, serving *s)
{
    const uint32_t L = s->labels.names.n;
    engine_seq *seqs = malloc(sizeof *seqs * s->set.n);
    s->scores = malloc(sizeof(double) * s->set.n * L);
    if (!seqs || !s->scores) {
        free(seqs);
        return fail("out of memory");
    }
    task_seqs(&s->set, 0, s->set.n, s->E, s->n_rows, seqs);
    double t0 = now();
    int rc = engine_score(s->e, seqs, s->set.n, &s->labels.view, s->scores);
    s->seconds = now() - t0;
    free(seqs);
    if (rc)
        return fail("%s", engine_error());
    if (o->tlm) {
        if (!(s->ref = malloc(sizeof(double) * s->set.n * L)))
            return fail("out of memory");
        if (tinylm_scores(o->tlm, s->e, s->E, s->n_rows, &s->set, &s->labels, s->ref))
            return 1;
    }
    return 0;
}

static int write_scores(const char *path, const serving *s)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return fail("%s: cannot write", path);
    const uint32_t L = s->labels.names.n;
    for (size_t i = 0; i < s->set.n; i++) {
        const double *sc = s->scores + i * L;
        fprintf(f, "{\"line\": %u, \"label\": %u, \"pred\": %u, \"scores\": [", s->set.line[i],
                s->set.label[i], predict(sc, L));
        for (uint32_t c = 0; c < L; c++)
            fprintf(f, c ? ", %.17g" : "%.17g", sc[c]);
        fputs("]}\n", f);
    }
    return fclose(f) ? fail("%s: write error", path) : 0;
}

static void serve_report(const options *o, const serving *s)
{
    const uint32_t L = s->labels.names.n;
    const size_t n = s->set.n;
    size_t right = 0, right_ref = 0, agree = 0;
    double max_abs = 0, max_rel = 0;
    for (size_t i = 0; i < n; i++) {
        const double *sc = s->scores + i * L;
        const uint32_t pred = predict(sc, L);
        right += pred == s->set.label[i];
        if (!s->ref)
            continue;
        const double *r = s->ref + i * L;
        const uint32_t pref = predict(r, L);
        right_ref += pref == s->set.label[i];
        agree += pref == pred;
        double scale = 0;
        for (uint32_t c = 0; c < L; c++)
            scale = fmax(scale, fabs(r[c]));
        for (uint32_t c = 0; c < L; c++) {
            max_abs = fmax(max_abs, fabs(sc[c] - r[c]));
            max_rel = fmax(max_rel, fabs(sc[c] - r[c]) / fmax(scale, 1e-30));
        }
    }
    const double acc = (double)right / (double)n;
    const engine_identity *id = engine_identity_of(s->e);
    if (o->json) {
        printf("{\"examples\": %zu, \"labels\": %u, \"rows\": %u, \"acc_llama\": %.6f", n, L,
               s->n_rows, acc);
        if (s->ref)
            printf(", \"acc_tinylm\": %.6f, \"label_agreement\": %.6f, \"max_abs_label_logit\": "
                   "%.6g, \"max_rel_label_logit\": %.6g", (double)right_ref / (double)n,
                   (double)agree / (double)n, max_abs, max_rel);
        printf(", \"weights\": \"%s\", \"identity_note\": %s, \"seconds\": %.3f}\n",
               id->weights, s->note[0] ? "true" : "false", s->seconds);
        return;
    }
    if (s->note[0])
        printf("note: %s\n", s->note);
    printf("%s (%s, %s, %u rows) on %s: %zu test examples, %u labels\n",
           o->prompt ? o->prompt : "no prompt", id->arch, id->weights, s->n_rows, s->set.path,
           n, L);
    printf("  test accuracy through llama.cpp: %.2f%%  (%.0f requests/s)\n", 100 * acc,
           (double)n / s->seconds);
    if (s->ref) {
        printf("  test accuracy through tinylm's C forward: %.2f%%\n",
               100 * (double)right_ref / (double)n);
        printf("  same predicted label: %zu of %zu (%.2f%%)\n", agree, n,
               100 * (double)agree / (double)n);
        printf("  label scores: max |diff| %.3g, relative %.3g\n", max_abs, max_rel);
    }
}

int cmd_serve(const options *o)
{
    serving s = { 0 };
    int rc = serve_load(o, &s) || serve_run(o, &s) ||
             (o->scores && write_scores(o->scores, &s));
    if (!rc)
        serve_report(o, &s);
    free(s.E);
    free(s.scores);
    free(s.ref);
    task_set_free(&s.set);
    data_free(&s.test);
    labels_free(&s.labels);
    ulpt_prompt_free(s.p);
    engine_free(s.e);
    return rc;
}

int main(int argc, char **argv)
{
    options o;
    cli_set_name("ulpt-llama");
    if (parse_args(argc, argv, &o))
        return 2;
    ulpt_set_num_threads(1);
    static const struct {
        const char *name;
        int (*run)(const options *);
    } commands[] = {
        { "identity", cmd_identity }, { "tokenize", cmd_tokenize }, { "quantize", cmd_quantize },
        { "serve", cmd_serve },       { "tune", cmd_tune },         { "tenants", cmd_tenants },
        { "check", cmd_check },
    };
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(o.cmd, commands[i].name))
            return commands[i].run(&o);
    return fail("unknown command \"%s\" (see --help)", o.cmd);
}
