// oneDNN's C API (Debian libdnnl-dev: built with OpenMP threading through libgomp) and the two
// OpenMP calls that set and read the calling thread's team size. They are declared here rather
// than through <omp.h>, which lives in GCC's private include directory.
#ifndef LORA_DIST_CDNNL_SHIM_H
#define LORA_DIST_CDNNL_SHIM_H
#include <dnnl.h>

void omp_set_num_threads(int num_threads);
int omp_get_max_threads(void);
#endif
