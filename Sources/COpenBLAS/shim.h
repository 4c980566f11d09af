// OpenBLAS's CBLAS interface, its thread control, and LAPACKE (for SVD-based tools).
#ifndef LORA_DIST_COPENBLAS_SHIM_H
#define LORA_DIST_COPENBLAS_SHIM_H
#include <cblas.h>
#include <lapacke.h>
#endif
