// Open MPI's handles are macros (addresses of global objects) that Swift cannot import.
// Each getter below returns one of them; no logic lives here.
#ifndef LORA_DIST_CMPI_SHIM_H
#define LORA_DIST_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm lds_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm lds_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype lds_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype lds_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype lds_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype lds_uint8(void) { return MPI_UINT8_T; }
static inline MPI_Op lds_op_sum(void) { return MPI_SUM; }
static inline MPI_Op lds_op_max(void) { return MPI_MAX; }
static inline MPI_Errhandler lds_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline void *lds_in_place(void) { return MPI_IN_PLACE; }
static inline int lds_success(void) { return MPI_SUCCESS; }
static inline int lds_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int lds_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }
static inline int lds_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int lds_undefined(void) { return MPI_UNDEFINED; }
static inline MPI_Status *lds_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline int lds_any_source(void) { return MPI_ANY_SOURCE; }
static inline MPI_Request lds_request_null(void) { return MPI_REQUEST_NULL; }

#endif
