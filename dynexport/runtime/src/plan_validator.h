/*
 * Plan validation: everything frame_program.py's FrameProgram.validate checks, plus what
 * the C runtime relies on when it indexes memory (each layer tensor has exactly the dims
 * and dtype its instructions assume, jumps only go forward, ...). After
 * dynrt_plan_validate returns DYNRT_OK no instruction can read or write out of range.
 */
#ifndef DYNRT_PLAN_VALIDATOR_H
#define DYNRT_PLAN_VALIDATOR_H

#include "plan_reader.h"
#include "status.h"

dynrt_status dynrt_plan_validate(const plan_view* plan, error_sink* error);

/* The hidden width of a D-STEP layer's channel policy that its gate_weight_count implies
 * (0 without a channel policy), or UINT32_MAX when no width fits (plan/dstep_policy.py). */
uint32_t dynrt_dstep_policy_hidden(const plan_layer* layer);

/* Bytes of a tensor that passed validation (4 bytes per element; at most 2^31). */
uint64_t dynrt_tensor_bytes(const plan_tensor* tensor);

#endif /* DYNRT_PLAN_VALIDATOR_H */
