/* The AVX2 tile kernel built with AVX-VNNI (vpdpbusd on 256-bit vectors), for decode on CPUs that
 * have AVX-VNNI without AVX-512 (Intel cores since Alder Lake); see qmatmul_avx2.c. */
#define AVX2_TILE_VNNI
#include "qmatmul_avx2.c"
