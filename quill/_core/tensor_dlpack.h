/*
 * The DLPack 1.0 ABI (https://dmlc.github.io/dlpack/latest/c_api.html), declared here so
 * quill/_core/tensor.pyx can export tensors without a build dependency on dlpack.h.
 * Layouts match dlpack.h v1.0 exactly; only the members quill uses are named as constants.
 */
#ifndef QUILL_TENSOR_DLPACK_H
#define QUILL_TENSOR_DLPACK_H

#include <stdint.h>

#define QUILL_DLPACK_MAJOR 1
#define QUILL_DLPACK_MINOR 0

/* DLDeviceType */
#define QUILL_kDLCPU 1

/* DLDataTypeCode */
#define QUILL_kDLInt 0
#define QUILL_kDLUInt 1
#define QUILL_kDLFloat 2
#define QUILL_kDLBfloat 4
#define QUILL_kDLBool 6

/* DLManagedTensorVersioned.flags */
#define QUILL_DLPACK_FLAG_READ_ONLY ((uint64_t)1 << 0)
#define QUILL_DLPACK_FLAG_IS_COPIED ((uint64_t)1 << 1)

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

typedef struct {
    int32_t device_type; /* a C enum in dlpack.h: int-sized */
    int32_t device_id;
} DLDevice;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} DLTensor;

/* The pre-1.0 ("legacy") struct, carried by capsules named "dltensor". */
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

/* The 1.x struct, carried by capsules named "dltensor_versioned". */
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

#endif
