/* Run-time choice of the kernel implementation. Only the scalar path exists so far. */
#include "kernels/qmatmul.h"

void qmatmul(const qweight *w, const float *x, int n_tok, float *y, int ldy, int r0, int r1)
{
    qmatmul_scalar(w, x, n_tok, y, ldy, r0, r1);
}

const char *kernels_isa(void) { return "scalar"; }
