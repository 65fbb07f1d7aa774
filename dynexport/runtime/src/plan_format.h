/*
 * The frame-program file format "DXFP" 2.x, as dynexport/plan/frame_program.py writes it
 * (that file is the single description of the format; this mirrors it field by field).
 *
 *   header   "DXFP" | u16 major | u16 minor | u32 payload_bytes | u32 crc32(payload)
 *   payload  u32 counts[10], then the record tables, u32 operands/inputs/outputs, the
 *            NUL-terminated strings and the float32 constants, all little-endian.
 *
 * Records are decoded into the plain structs below (host byte order); name fields stay
 * byte offsets into the string section until the session copies the strings.
 */
#ifndef DYNRT_PLAN_FORMAT_H
#define DYNRT_PLAN_FORMAT_H

#include <stdint.h>

#define PLAN_MAGIC "DXFP"
#define PLAN_MAJOR_VERSION 2u
#define PLAN_HEADER_BYTES 16u
#define PLAN_COUNT_FIELDS 10u

/* Record sizes in the file (struct formats of frame_program.py). */
#define TENSOR_RECORD_BYTES 24u       /* <IBBBB4I */
#define SEGMENT_RECORD_BYTES 24u      /* <6I */
#define LAYER_RECORD_BYTES 140u       /* <3I10I4I3f2I11I2I */
#define INSTRUCTION_RECORD_BYTES 20u  /* <5I */
#define ARTIFACT_RECORD_BYTES 12u     /* <3I */

#define NO_TENSOR 0xFFFFFFFFu
#define NO_LAYER 0xFFFFFFFFu

/* The largest tensor the format allows (frame_program.py: nbytes > 1 << 31 is invalid). */
#define PLAN_MAX_TENSOR_BYTES (UINT64_C(1) << 31)

enum tensor_dtype { DTYPE_FLOAT32 = 0, DTYPE_INT32 = 1 };
enum tensor_layout { LAYOUT_NHWC = 0, LAYOUT_PLAIN = 1 };
enum tensor_role { ROLE_INPUT = 0, ROLE_OUTPUT = 1, ROLE_STATE = 2, ROLE_SCRATCH = 3 };
enum layer_kind { LAYER_SKIP_CONV = 0, LAYER_DSTEP = 1 };
enum gate_kind { GATE_INPUT_NORM = 0, GATE_OUTPUT_NORM = 1, GATE_GUMBEL = 2, GATE_DSTEP_POLICY = 3 };

/* Instructions; operands a, b, c, d (c: RUN_SEGMENT's flags or a first channel; d: a channel
 * count or a batch layer, 2.2). */
enum opcode {
  OP_RUN_SEGMENT = 0,      /* a = segment, b = layer whose active count is the batch, or NO_LAYER */
  OP_SKIP_GATE = 1,        /* a = layer */
  OP_BRANCH_IF_NONE = 2,   /* a = layer, b = target */
  OP_BRANCH_IF_DENSE = 3,  /* a = layer, b = target */
  OP_JUMP = 4,             /* a = target */
  OP_GATHER_TILES = 5,     /* a = layer */
  OP_SCATTER_TILES = 6,    /* a = layer */
  OP_COPY_BLOCKS = 7,      /* a = layer */
  OP_STORE_REFERENCE = 8,  /* a = layer */
  OP_DSTEP_DECIDE = 9,     /* a = layer */
  OP_DSTEP_APPLY = 10,     /* a = layer, b = source (DSTEP_SOURCE_*) */
  OP_COPY_TENSOR = 11,     /* a = source tensor, b = destination tensor */
  /* a = D-STEP layer, b = target, c = first channel, d = channel count: jump when none of
   * channels [c, c + d) computes this frame (2.2) */
  OP_BRANCH_IF_GROUP_IDLE = 12,
  /* a = source [N, H, W, Cs], b = destination [N, H, W, Cd], c = first channel, d = layer
   * whose active count is the batch or NO_LAYER (all N): dst[:n, ..., c:c+Cs] = src[:n] (2.2) */
  OP_COPY_CHANNELS = 13,
  /* a = layer, b = target, c = count, d = hold: jump when the layer's active count is above c,
   * or when it was on one of the last d frames (2.3) */
  OP_BRANCH_IF_BUSY = 14,
  /* a = first layer, b = layer count: skip-conv layers [a, a + b) were computed outside their
   * instructions (the dense fallback segment): every block counts as computed this frame and
   * each layer is unprimed, its state not kept (2.3) */
  OP_FORGET_LAYERS = 15,
  /* a = skip-conv layer, b = target: while BRANCH_IF_BUSY's hold has frames left, take one
   * off, count every block of the layer active without scoring (computed and stored as on
   * an unprimed layer) and jump (2.4) */
  OP_BRANCH_IF_HOLDING = 16,
  /* a = D-STEP layer, b = pooled tensor [1, Cin] (written), c = previous pooled [1, Cin]:
   * the layer's policies on its input -> spatial / channel logits and the pooled input,
   * weights at the layer's gate_weight (layout: dynexport/plan/dstep_policy.py) (2.4) */
  OP_DSTEP_POLICY = 17,
  OP_COUNT = 18
};

/* RUN_SEGMENT's c: flags (frame_program.RunFlag). RUN_POINTWISE: the segment is pointwise
 * in space (every output pixel is a function of the same pixel of its inputs, e.g. an
 * activation or a residual add), a hint the runtime uses to track which blocks of its
 * outputs changed; the plan's semantics do not depend on it (format 2.1). */
#define RUN_POINTWISE 1u
/* RUN_NEAREST_UPSAMPLE: pointwise ops and a nearest upsampling by integer factors, in any
 * order: output pixel (y, x) is a function of input pixels (y / fy, x / fx) alone, fy and
 * fx the outputs' height and width over the inputs' (format 2.5). */
#define RUN_NEAREST_UPSAMPLE 2u
#define RUN_KNOWN_FLAGS (RUN_POINTWISE | RUN_NEAREST_UPSAMPLE)

enum dstep_source { DSTEP_SOURCE_NONE = 0, DSTEP_SOURCE_TILES = 1, DSTEP_SOURCE_DENSE = 2 };

/* D-STEP channel decisions (the argmax of the three channel logits). */
enum channel_decision { CHANNEL_SKIP = 0, CHANNEL_REUSE = 1, CHANNEL_COMPUTE = 2 };

typedef struct plan_tensor {
  uint32_t name;
  uint32_t dtype, layout, role, rank;
  uint32_t dims[4];  /* only dims[0..rank) are meaningful */
} plan_tensor;

typedef struct plan_segment {
  uint32_t name;
  uint32_t input_begin, input_count;
  uint32_t output_begin, output_count;
  uint32_t max_batch;  /* > 0: tile segment */
} plan_segment;

/* The tensors a gated layer works on, in file order; NO_TENSOR when absent. */
enum layer_tensor_slot {
  SLOT_INPUT, SLOT_OUTPUT, SLOT_REFERENCE, SLOT_TILES, SLOT_TILE_OUTPUT, SLOT_DENSE_OUTPUT,
  SLOT_PRIMED, SLOT_SPATIAL_LOGITS, SLOT_CHANNEL_LOGITS, SLOT_DECISIONS, SLOT_ACTIVE,
  LAYER_TENSOR_SLOTS
};

typedef struct plan_layer {
  uint32_t name, kind, gate;
  uint32_t input_size[2], kernel[2], stride[2], padding[2], dilation[2];  /* [height, width] */
  uint32_t block, in_channels, out_channels, dense_cutoff;
  float threshold, norm_scale, gate_bias;
  uint32_t gate_weight, gate_weight_count;  /* constants element offset and count */
  uint32_t tensors[LAYER_TENSOR_SLOTS];
  uint32_t macs_per_position, gate_macs_per_position;
} plan_layer;

typedef struct plan_instruction {
  uint32_t op, a, b, c, d;
} plan_instruction;

typedef struct plan_artifact {
  uint32_t name, size, crc32;
} plan_artifact;

#endif /* DYNRT_PLAN_FORMAT_H */
