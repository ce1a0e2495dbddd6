/* Private layout of a loaded model, shared by the loader (model_load.c) and the forward pass (qwen2.c). */
#ifndef PUNIE_MODEL_MODEL_INTERNAL_H
#define PUNIE_MODEL_MODEL_INTERNAL_H

#include <pthread.h>

#include "kernels/qmatmul.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/vector_isa.h"
#include "util/threadpool.h"

typedef struct layer_weights {
    float *attn_norm, *mlp_norm;   /* [hidden] */
    float *bq, *bk, *bv;           /* q/k/v Linear biases */
    qweight wq, wk, wv, wo;
    qweight w_gate, w_up, w_down;
} layer_weights;

struct model {
    model_config cfg;
    st_set *st;
    layer_weights *layers;
    qweight embed;
    qweight head;                  /* lm_head, or the embedding when tied */
    float *final_norm;
    double *rope_inv_freq;         /* [head_dim / 2] */
    threadpool *pool;
    qact *act;                     /* shared quantized activations of a batch */
    pthread_mutex_t pool_lock;     /* one context evaluates at a time */
    size_t weight_bytes;
    /* vector code picked for the CPU by qwen2_setup */
    attend_fn attend;     /* attend_queries for this CPU */
    silu_mul_fn silu_mul; /* v16_silu_mul_span for this CPU */
    /* model_warm_start's reader: stopped and joined by model_free */
    pthread_t warm_thread;
    bool warm_started;
    volatile int warm_stop;
    model_warm_done_fn warm_done;
    void *warm_ud;
};

/* Chooses the compute paths of the forward pass (qwen2.c). */
void qwen2_setup(model *m);

#endif
