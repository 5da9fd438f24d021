/* test_busy.c -- the threading rules (include/ulpt.h, THREADS) turn misuse into
 * ULPT_ERR_BUSY, never a wrong result.  Each race is played deterministically: a
 * concurrent forward is a reader counted into the prompt's lock word as forward counts
 * itself (lib/lock.c), and nested calls are made from inside the step's callback. */
#include "test.h"

#include "internal.h"

static int bowl(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    (void)user;
    *loss = 0;
    for (size_t k = 0; k < (size_t)n * d; k++) {
        grad[k] = e[k] - 0.25f;
        *loss += 0.5 * (double)grad[k] * grad[k];
    }
    return 0;
}

static void busy_said(const char *word)
{
    ck_assert_msg(strstr(ulpt_last_error(), word) != NULL, "message \"%s\" lacks \"%s\"",
                  ulpt_last_error(), word);
}

/* While a forward runs (counted in), every writer of the prompt refuses and changes
 * nothing; once it is out, they work. */
TEST(writers_refuse_while_a_forward_runs)
{
    ulpt_prompt *p = test_prompt(4, 2, 600, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    size_t np = ulpt_prompt_num_params(p);
    for (size_t i = 0; i < np; i++)
        ulpt_prompt_grads(p)[i] = 0.5f;
    float *params = malloc(np * sizeof *params), *grads = malloc(np * sizeof *grads);
    memcpy(params, ulpt_prompt_params(p), np * sizeof *params);
    memcpy(grads, ulpt_prompt_grads(p), np * sizeof *grads);
    float *g = calloc(4 * 600, sizeof *g);
    ck_assert_int_eq(ulpt__lock_read("test", &p->lock, "prompt"), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_backward(p, g, 600), ULPT_ERR_BUSY);
    busy_said("being read");
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_ERR_BUSY);
    ck_assert_int_eq(ulpt_train_step(p, o, bowl, NULL, NULL), ULPT_ERR_BUSY);
    ck_assert_int_eq(ulpt_prompt_set_meta(p, "k", "v"), ULPT_ERR_BUSY);
    ck_assert_int_eq(ulpt_prompt_init_from_embeddings(p, g, 600, NULL, NULL), ULPT_ERR_BUSY);
    ulpt_optimizer *o2 = NULL;
    ck_assert_int_eq(ulpt_optimizer_create(&o2, p, NULL), ULPT_ERR_BUSY);
    ck_assert_ptr_null(o2);
    ulpt_zo *z = NULL;
    ck_assert_int_eq(ulpt_zo_create(&z, p, o, NULL), ULPT_ERR_BUSY);
    ck_assert_ptr_null(z);
    ulpt_prompt_zero_grad(p); /* void: leaves the prompt, says why */
    busy_said("ulpt_prompt_zero_grad");
    ck_assert_mem_eq(ulpt_prompt_params(p), params, np * sizeof *params);
    ck_assert_mem_eq(ulpt_prompt_grads(p), grads, np * sizeof *grads);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 0);
    ck_assert_ptr_null(ulpt_prompt_get_meta(p, "k"));
    /* other readers are fine alongside */
    ck_assert_int_eq(ulpt_prompt_forward(p, g, 600), ULPT_OK);
    void *buf;
    size_t len;
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, NULL), ULPT_OK);
    ulpt_free(buf);
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(&buf, &len, p, o), ULPT_OK);
    ulpt_free(buf);
    ulpt__lock_unread(&p->lock);
    ck_assert_uint_eq(atomic_load(&p->lock.word), 0);
    ulpt_prompt_zero_grad(p);
    ck_assert_float_eq(ulpt_prompt_grads(p)[0], 0.0f);
    ck_assert_int_eq(ulpt_prompt_backward(p, g, 600), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_step(o), ULPT_OK);
    ck_assert_int_eq(ulpt_train_step(p, o, bowl, NULL, NULL), ULPT_OK);
    free(params), free(grads), free(g);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* While a writer writes, readers refuse: a forward never sees half an update. */
TEST(readers_refuse_while_a_writer_writes)
{
    ulpt_prompt *p = test_prompt(4, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    float e[4 * 16];
    void *buf = NULL;
    size_t len;
    ck_assert_int_eq(ulpt__lock_hold("ulpt_optimizer_step", &p->lock, "prompt", 1), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_forward(p, e, 16), ULPT_ERR_BUSY);
    busy_said("in use by ulpt_optimizer_step");
    ck_assert_int_eq(ulpt_prompt_save_buffer(p, &buf, &len, NULL), ULPT_ERR_BUSY);
    ck_assert_ptr_null(buf);
    ulpt__lock_release(&p->lock);
    ck_assert_int_eq(ulpt__lock_hold("ulpt_train_step", &o->lock, "optimizer", 1), ULPT_OK);
    ck_assert_int_eq(ulpt_checkpoint_save_buffer(&buf, &len, p, o), ULPT_ERR_BUSY);
    busy_said("optimizer is in use by ulpt_train_step");
    ulpt__lock_release(&o->lock);
    ck_assert_uint_eq(atomic_load(&p->lock.word), 0);
    ck_assert_int_eq(ulpt_prompt_forward(p, e, 16), ULPT_OK);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

/* What a callback does to the objects its step serves. */
typedef struct {
    ulpt_prompt *p;
    ulpt_optimizer *o;
    ulpt_zo *zo;
    int nested[8];     /* the codes of the nested calls */
    int forward_same;  /* a forward from the callback wrote the E the step handed over */
    int hold_reader;   /* leave a reader counted in, as a forward in another thread */
} nest;

static int nesting(void *user, const float *e, uint32_t n, uint32_t d, float *grad, double *loss)
{
    nest *t = user;
    float *mine = malloc((size_t)n * d * sizeof *mine), *g = calloc((size_t)n * d, sizeof *g);
    t->nested[0] = ulpt_train_step(t->p, t->o, bowl, NULL, NULL);
    t->nested[1] = ulpt_prompt_backward(t->p, g, d);
    t->nested[2] = ulpt_optimizer_step(t->o);
    t->nested[3] = ulpt_prompt_set_meta(t->p, "k", "v");
    t->nested[4] = ulpt_prompt_forward(t->p, mine, d);
    t->forward_same = !memcmp(mine, e, (size_t)n * d * sizeof *e);
    void *buf = NULL;
    size_t len;
    t->nested[5] = ulpt_checkpoint_save_buffer(&buf, &len, t->p, t->o);
    ulpt_free(buf);
    t->nested[6] = t->zo ? ulpt_zo_set_position(t->zo, 99) : 0;
    free(mine), free(g);
    if (t->hold_reader)
        ck_assert_int_eq(ulpt__lock_read("test", &t->p->lock, "prompt"), ULPT_OK);
    return bowl(NULL, e, n, d, grad, loss);
}

/* From the callback: writers get BUSY, readers (forward, saves) work and see the
 * parameters of the step; the step then gives exactly what it gives alone. */
TEST(a_train_step_holds_its_objects_through_the_callback)
{
    ulpt_prompt *p = test_prompt(4, 2, 600, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *q = test_prompt(4, 2, 600, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o, *oq;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&oq, q, NULL), ULPT_OK);
    nest t = {.p = p, .o = o};
    ck_assert_int_eq(ulpt_train_step(p, o, nesting, &t, NULL), ULPT_OK);
    ck_assert_int_eq(t.nested[0], ULPT_ERR_BUSY);
    ck_assert_int_eq(t.nested[1], ULPT_ERR_BUSY);
    ck_assert_int_eq(t.nested[2], ULPT_ERR_BUSY);
    ck_assert_int_eq(t.nested[3], ULPT_ERR_BUSY);
    ck_assert_int_eq(t.nested[4], ULPT_OK);
    ck_assert(t.forward_same);
    ck_assert_int_eq(t.nested[5], ULPT_OK);
    ck_assert_int_eq(ulpt_train_step(q, oq, bowl, NULL, NULL), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q),
                     ulpt_prompt_num_params(p) * sizeof(float));
    ck_assert_ptr_null(ulpt_prompt_get_meta(p, "k"));
    ck_assert_uint_eq(atomic_load(&p->lock.word), 0);
    ck_assert_uint_eq(atomic_load(&o->lock.word), 0);
    ulpt_optimizer_free(o), ulpt_optimizer_free(oq);
    ulpt_prompt_free(p), ulpt_prompt_free(q);
}

/* issue 21's race: a forward (another thread's) still running when the host returns.
 * The step refuses with BUSY before it writes anything, instead of reusing the scratch
 * under the forward and updating the parameters. */
TEST(a_step_refuses_to_write_while_a_forward_still_runs)
{
    ulpt_prompt *p = test_prompt(4, 2, 600, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_train_step(p, o, bowl, NULL, NULL), ULPT_OK);
    size_t np = ulpt_prompt_num_params(p);
    float *params = malloc(np * sizeof *params), *grads = malloc(np * sizeof *grads);
    memcpy(params, ulpt_prompt_params(p), np * sizeof *params);
    memcpy(grads, ulpt_prompt_grads(p), np * sizeof *grads);
    nest t = {.p = p, .o = o, .hold_reader = 1};
    double loss = -1;
    ck_assert_int_eq(ulpt_train_step(p, o, nesting, &t, &loss), ULPT_ERR_BUSY);
    busy_said("being read by 1");
    ck_assert_double_eq(loss, -1);
    ck_assert_mem_eq(ulpt_prompt_params(p), params, np * sizeof *params);
    ck_assert_mem_eq(ulpt_prompt_grads(p), grads, np * sizeof *grads);
    ck_assert_uint_eq(ulpt_optimizer_step_count(o), 1);
    ulpt__lock_unread(&p->lock);
    ck_assert_uint_eq(atomic_load(&p->lock.word), 0);
    ck_assert_uint_eq(atomic_load(&o->lock.word), 0);
    ck_assert_int_eq(ulpt_train_step(p, o, bowl, NULL, NULL), ULPT_OK);
    free(params), free(grads);
    ulpt_optimizer_free(o);
    ulpt_prompt_free(p);
}

static float zo_before[4 * 16]; /* E of the prompt before the step */

static int zo_losses(void *user, const float *e, uint32_t count, uint32_t n, uint32_t d,
                     double *losses)
{
    nest *t = user;
    if (t) { /* nested calls, from the first call of the step */
        float *g = calloc((size_t)n * d, sizeof *g), *mine = malloc((size_t)n * d * sizeof *mine);
        t->nested[0] = ulpt_zo_step(NULL, t->zo, zo_losses, NULL);
        t->nested[1] = ulpt_train_step(t->p, t->o, bowl, NULL, NULL);
        t->nested[2] = ulpt_zo_set_position(t->zo, 99);
        t->nested[3] = ulpt_prompt_backward(t->p, g, d);
        t->nested[4] = ulpt_prompt_forward(t->p, mine, d);
        /* theta, not a perturbation: the E of a forward before the step */
        t->forward_same = !memcmp(mine, zo_before, sizeof zo_before);
        free(g), free(mine);
        user = NULL;
    }
    for (uint32_t c = 0; c < count; c++) {
        losses[c] = 0;
        for (size_t k = 0; k < (size_t)n * d; k++)
            losses[c] += 0.5 * (e[c * (size_t)n * d + k] - 0.25) * (e[c * (size_t)n * d + k] - 0.25);
    }
    return 0;
}

/* The forward-only step holds handle, optimizer and prompt: nested steps and writers get
 * BUSY, a forward sees theta unperturbed, the step's result is unchanged. */
TEST(a_zo_step_holds_its_objects_through_the_callback)
{
    ulpt_prompt *p = test_prompt(4, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_prompt *q = test_prompt(4, 2, 16, 1, ULPT_PROJ_XAVIER_UNIFORM, 0);
    ulpt_optimizer *o, *oq;
    ck_assert_int_eq(ulpt_optimizer_create(&o, p, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_optimizer_create(&oq, q, NULL), ULPT_OK);
    ulpt_zo *z, *zq;
    ck_assert_int_eq(ulpt_zo_create(&z, p, o, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_zo_create(&zq, q, oq, NULL), ULPT_OK);
    ck_assert_int_eq(ulpt_prompt_forward(p, zo_before, 16), ULPT_OK);
    nest t = {.p = p, .o = o, .zo = z};
    ck_assert_int_eq(ulpt_zo_step(NULL, z, zo_losses, &t), ULPT_OK);
    for (int k = 0; k < 4; k++)
        ck_assert_int_eq(t.nested[k], ULPT_ERR_BUSY);
    ck_assert_int_eq(t.nested[4], ULPT_OK);
    ck_assert(t.forward_same);
    ck_assert_int_eq(ulpt_zo_step(NULL, zq, zo_losses, NULL), ULPT_OK);
    ck_assert_mem_eq(ulpt_prompt_params(p), ulpt_prompt_params(q),
                     ulpt_prompt_num_params(p) * sizeof(float));
    ck_assert_uint_eq(ulpt_zo_position(z), ulpt_zo_position(zq));
    ulpt_zo_free(z), ulpt_zo_free(zq);
    ulpt_optimizer_free(o), ulpt_optimizer_free(oq);
    ulpt_prompt_free(p), ulpt_prompt_free(q);
}
