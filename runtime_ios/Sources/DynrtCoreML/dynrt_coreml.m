/*
 * The Core ML backend adapter (dynrt backend interface v2, dynrt_backend_impl.h): one MLModel
 * per plan segment, loaded from the package's function of the segment's name, run on
 * MLMultiArray views of the runtime's buffers. See dynrt_coreml.h for the contract.
 *
 * Compiled with ARC by the Swift package (runtime_ios/Package.swift), on Apple platforms only.
 * Written against Apple's documented Core ML API and not compiled or run where it was
 * written (no Apple toolchain there): runtime_ios/README.md says what that means.
 *
 * Objects: the backend's context is a DynrtCoreMLBackend (compiled model URL, compute units),
 * each session's state a DynrtCoreMLSession holding one DynrtCoreMLSegment per plan segment;
 * both cross the C interface as retained pointers (__bridge_retained / __bridge_transfer).
 */
#import <CoreML/CoreML.h>
#import <Foundation/Foundation.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynrt_backend_impl.h"
#include "dynrt_coreml.h"

#define INPUT_NAME @"input_%u"
#define OUTPUT_NAME @"output_%u"

static dynrt_status fail(char* message, size_t capacity, dynrt_status status, NSString* format, ...)
    NS_FORMAT_FUNCTION(4, 5);

static dynrt_status fail(char* message, size_t capacity, dynrt_status status, NSString* format, ...) {
  if (message != NULL && capacity > 0) {
    va_list args;
    va_start(args, format);
    NSString* text = [[NSString alloc] initWithFormat:format arguments:args];
    va_end(args);
    snprintf(message, capacity, "%s", text.UTF8String ? text.UTF8String : "(no message)");
  }
  return status;
}

/* One operand as the plan gives it: dims in memory order, dtype, its buffer. */
@interface DynrtCoreMLOperand : NSObject
@property(nonatomic) uint32_t rank;
@property(nonatomic) uint32_t dtype;  /* 0 float32, 1 int32 */
@property(nonatomic) void* buffer;
@property(nonatomic, copy) NSArray<NSNumber*>* dims;
@end
@implementation DynrtCoreMLOperand
@end

@interface DynrtCoreMLSegment : NSObject
@property(nonatomic, strong) MLModel* model;
@property(nonatomic, copy) NSString* name;
@property(nonatomic) uint32_t maxBatch;
@property(nonatomic, strong) NSArray<DynrtCoreMLOperand*>* inputs;
@property(nonatomic, strong) NSArray<DynrtCoreMLOperand*>* outputs;
/* per batch (index batch - 1), made on the first call with that batch */
@property(nonatomic, strong) NSMutableArray* providers;  /* MLDictionaryFeatureProvider or NSNull */
@property(nonatomic, strong) NSMutableArray* options;    /* MLPredictionOptions or NSNull */
@property(nonatomic, strong) NSMutableArray* backings;   /* NSArray<MLMultiArray*> or NSNull */
@end
@implementation DynrtCoreMLSegment
@end

@interface DynrtCoreMLSession : NSObject
@property(nonatomic, strong) NSMutableArray<DynrtCoreMLSegment*>* segments;
@property(nonatomic) uint32_t segmentCount;
@end
@implementation DynrtCoreMLSession
@end

@interface DynrtCoreMLBackend : NSObject
@property(nonatomic, strong) NSURL* compiledURL;
@property(nonatomic) BOOL ownsCompiledURL;  /* compiled here: removed on destroy */
@property(nonatomic) MLComputeUnits units;
@end
@implementation DynrtCoreMLBackend
@end

static MLMultiArrayDataType array_type(uint32_t dtype) {
  return dtype == 1 ? MLMultiArrayDataTypeInt32 : MLMultiArrayDataTypeFloat32;
}

static NSString* dims_text(NSArray<NSNumber*>* dims) {
  return [NSString stringWithFormat:@"[%@]", [dims componentsJoinedByString:@", "]];
}

static NSArray<DynrtCoreMLOperand*>* operands(uint32_t count, const dynrt_operand_info* infos, void* const* buffers) {
  NSMutableArray* result = [NSMutableArray arrayWithCapacity:count];
  for (uint32_t i = 0; i < count; ++i) {
    DynrtCoreMLOperand* operand = [DynrtCoreMLOperand new];
    operand.rank = infos[i].rank;
    operand.dtype = infos[i].dtype;
    operand.buffer = buffers != NULL ? buffers[i] : NULL;
    NSMutableArray* dims = [NSMutableArray arrayWithCapacity:infos[i].rank];
    for (uint32_t d = 0; d < infos[i].rank; ++d) [dims addObject:@(infos[i].dims[d])];
    operand.dims = dims;
    [result addObject:operand];
  }
  return result;
}

/* A feature of the function against its plan operand. tile: max batch of a tile operand
 * (dim 0 varies), 0 otherwise. */
static dynrt_status check_feature(MLFeatureDescription* feature, NSString* name, DynrtCoreMLOperand* operand,
                                  uint32_t tile, BOOL isInput, NSString* segment, char* message, size_t capacity) {
  if (feature == nil) {
    return fail(message, capacity, DYNRT_SEGMENT_MISMATCH, @"Core ML segment %@: the function has no %@ %@",
                segment, isInput ? @"input" : @"output", name);
  }
  if (feature.type != MLFeatureTypeMultiArray) {
    return fail(message, capacity, DYNRT_SEGMENT_MISMATCH, @"Core ML segment %@: %@ is not a multi-array", segment,
                name);
  }
  MLMultiArrayConstraint* constraint = feature.multiArrayConstraint;
  if (constraint.dataType != array_type(operand.dtype)) {
    return fail(message, capacity, DYNRT_SEGMENT_MISMATCH, @"Core ML segment %@: %@ has data type %ld, the plan's "
                @"operand is %@", segment, name, (long)constraint.dataType, operand.dtype == 1 ? @"int32" : @"float32");
  }
  NSArray<NSNumber*>* shape = constraint.shape;
  if (shape.count == 0 && !isInput) return DYNRT_OK;  /* a dynamic output: its dims are not in the description */
  if (shape.count != operand.rank) {
    return fail(message, capacity, DYNRT_SEGMENT_MISMATCH, @"Core ML segment %@: %@ has shape %@, the plan's operand "
                @"%@", segment, name, dims_text(shape), dims_text(operand.dims));
  }
  for (uint32_t d = tile ? 1 : 0; d < operand.rank; ++d) {
    if (shape[d].unsignedIntValue != operand.dims[d].unsignedIntValue) {
      return fail(message, capacity, DYNRT_SEGMENT_MISMATCH, @"Core ML segment %@: %@ has shape %@, the plan's "
                  @"operand %@", segment, name, dims_text(shape), dims_text(operand.dims));
    }
  }
  if (tile && isInput) {
    MLMultiArrayShapeConstraint* shapes = constraint.shapeConstraint;
    NSRange batch = shapes.type == MLMultiArrayShapeConstraintTypeRange && shapes.sizeRangeForDimension.count > 0
                        ? shapes.sizeRangeForDimension[0].rangeValue
                        : NSMakeRange(shape[0].unsignedIntegerValue, 0);
    if (batch.location > 1 || NSMaxRange(batch) < tile) {
      return fail(message, capacity, DYNRT_SEGMENT_MISMATCH, @"Core ML segment %@: %@ takes batches %lu..%lu, the "
                  @"plan needs 1..%u", segment, name, (unsigned long)batch.location, (unsigned long)NSMaxRange(batch),
                  tile);
    }
  }
  return DYNRT_OK;
}

static MLMultiArray* view(DynrtCoreMLOperand* operand, uint32_t batch, BOOL batched, NSError** error) {
  NSMutableArray<NSNumber*>* shape = [operand.dims mutableCopy];
  if (batched) shape[0] = @(batch);
  NSMutableArray<NSNumber*>* strides = [NSMutableArray arrayWithCapacity:shape.count];
  NSInteger stride = 1;
  for (NSInteger d = (NSInteger)shape.count - 1; d >= 0; --d) {
    [strides insertObject:@(stride) atIndex:0];
    stride *= shape[(NSUInteger)d].integerValue;
  }
  return [[MLMultiArray alloc] initWithDataPointer:operand.buffer shape:shape dataType:array_type(operand.dtype)
                                           strides:strides deallocator:nil error:error];
}

/* The feature provider, prediction options and output backings of a segment at a batch:
 * views on the session's buffers, made once per batch. */
static BOOL bind(DynrtCoreMLSegment* segment, uint32_t batch, NSError** error) {
  NSUInteger slot = batch - 1;
  if (segment.providers[slot] != [NSNull null]) return YES;
  BOOL tile = segment.maxBatch > 0;
  NSMutableDictionary* features = [NSMutableDictionary dictionaryWithCapacity:segment.inputs.count];
  for (uint32_t i = 0; i < segment.inputs.count; ++i) {
    MLMultiArray* array = view(segment.inputs[i], batch, tile && i == 0, error);
    if (array == nil) return NO;
    features[[NSString stringWithFormat:INPUT_NAME, i]] = [MLFeatureValue featureValueWithMultiArray:array];
  }
  MLDictionaryFeatureProvider* provider = [[MLDictionaryFeatureProvider alloc] initWithDictionary:features error:error];
  if (provider == nil) return NO;
  NSMutableDictionary* backings = [NSMutableDictionary dictionaryWithCapacity:segment.outputs.count];
  NSMutableArray* ordered = [NSMutableArray arrayWithCapacity:segment.outputs.count];
  for (uint32_t i = 0; i < segment.outputs.count; ++i) {
    MLMultiArray* array = view(segment.outputs[i], batch, tile && i == 0, error);
    if (array == nil) return NO;
    backings[[NSString stringWithFormat:OUTPUT_NAME, i]] = array;
    [ordered addObject:array];
  }
  MLPredictionOptions* options = [MLPredictionOptions new];
  options.outputBackings = backings;
  segment.providers[slot] = provider;
  segment.options[slot] = options;
  segment.backings[slot] = ordered;
  return YES;
}

static dynrt_status prepare_session(void* context, const dynrt_plan_info* plan, void** state_out, char* message,
                                    size_t capacity) {
  (void)context;
  @autoreleasepool {
    DynrtCoreMLSession* session = [DynrtCoreMLSession new];
    if (session == nil) return fail(message, capacity, DYNRT_OUT_OF_MEMORY, @"Core ML: no memory for a session");
    session.segmentCount = plan->segment_count;
    session.segments = [NSMutableArray arrayWithCapacity:plan->segment_count];
    *state_out = (__bridge_retained void*)session;
    return DYNRT_OK;
  }
}

static dynrt_status prepare_segment(void* context, void* state, uint32_t index, const dynrt_segment_info* info,
                                    char* message, size_t capacity) {
  @autoreleasepool {
    DynrtCoreMLBackend* backend = (__bridge DynrtCoreMLBackend*)context;
    DynrtCoreMLSession* session = (__bridge DynrtCoreMLSession*)state;
    NSString* name = [NSString stringWithUTF8String:info->name];
    if (index != session.segments.count) {
      return fail(message, capacity, DYNRT_INVALID_ARGUMENT, @"Core ML: segment %u prepared out of order", index);
    }
    MLModelConfiguration* configuration = [MLModelConfiguration new];
    configuration.computeUnits = backend.units;
    configuration.functionName = name;
    NSError* error = nil;
    MLModel* model = [MLModel modelWithContentsOfURL:backend.compiledURL configuration:configuration error:&error];
    if (model == nil) {
      return fail(message, capacity, DYNRT_SEGMENT_MISMATCH, @"Core ML segment %@: the package has no loadable "
                  @"function of that name: %@", name, error.localizedDescription);
    }
    DynrtCoreMLSegment* segment = [DynrtCoreMLSegment new];
    segment.model = model;
    segment.name = name;
    segment.maxBatch = info->max_batch;
    segment.inputs = operands(info->input_count, info->inputs, info->input_buffers);
    segment.outputs = operands(info->output_count, info->outputs, info->output_buffers);
    MLModelDescription* description = model.modelDescription;
    if (description.inputDescriptionsByName.count != info->input_count ||
        description.outputDescriptionsByName.count != info->output_count) {
      return fail(message, capacity, DYNRT_SEGMENT_MISMATCH, @"Core ML segment %@: %lu inputs and %lu outputs, the "
                  @"plan has %u and %u", name, (unsigned long)description.inputDescriptionsByName.count,
                  (unsigned long)description.outputDescriptionsByName.count, info->input_count, info->output_count);
    }
    uint32_t tile = info->max_batch > 0 ? info->max_batch : 0;
    for (uint32_t i = 0; i < info->input_count; ++i) {
      NSString* feature = [NSString stringWithFormat:INPUT_NAME, i];
      dynrt_status status = check_feature(description.inputDescriptionsByName[feature], feature, segment.inputs[i],
                                          i == 0 ? tile : 0, YES, name, message, capacity);
      if (status != DYNRT_OK) return status;
    }
    for (uint32_t i = 0; i < info->output_count; ++i) {
      NSString* feature = [NSString stringWithFormat:OUTPUT_NAME, i];
      dynrt_status status = check_feature(description.outputDescriptionsByName[feature], feature, segment.outputs[i],
                                          i == 0 ? tile : 0, NO, name, message, capacity);
      if (status != DYNRT_OK) return status;
    }
    NSUInteger batches = tile ? tile : 1;
    segment.providers = [NSMutableArray arrayWithCapacity:batches];
    segment.options = [NSMutableArray arrayWithCapacity:batches];
    segment.backings = [NSMutableArray arrayWithCapacity:batches];
    for (NSUInteger b = 0; b < batches; ++b) {
      [segment.providers addObject:[NSNull null]];
      [segment.options addObject:[NSNull null]];
      [segment.backings addObject:[NSNull null]];
    }
    if (!tile && !bind(segment, 1, &error)) {  /* a fixed segment's one batch: bound now, not on the first frame */
      return fail(message, capacity, DYNRT_OUT_OF_MEMORY, @"Core ML segment %@: cannot make views on the runtime's "
                  @"buffers: %@", name, error.localizedDescription);
    }
    [session.segments addObject:segment];
    return DYNRT_OK;
  }
}

static size_t element_bytes(DynrtCoreMLOperand* operand, uint32_t batch, BOOL batched) {
  size_t count = 1;
  for (NSUInteger d = 0; d < operand.dims.count; ++d) {
    count *= (batched && d == 0) ? batch : operand.dims[d].unsignedIntValue;
  }
  return count * 4; /* float32 and int32 */
}

static dynrt_status run_segment(void* context, void* state, uint32_t index, uint32_t batch, void* const* inputs,
                                void* const* outputs) {
  (void)context;
  (void)inputs;  /* the same buffers as at prepare_segment (dynrt_backend_impl.h): the views are on them */
  (void)outputs;
  @autoreleasepool {
    DynrtCoreMLSession* session = (__bridge DynrtCoreMLSession*)state;
    if (index >= session.segments.count) return DYNRT_INVALID_ARGUMENT;
    DynrtCoreMLSegment* segment = session.segments[index];
    BOOL tile = segment.maxBatch > 0;
    if (batch < 1 || (tile && batch > segment.maxBatch) || (!tile && batch != 1)) return DYNRT_INVALID_ARGUMENT;
    NSError* error = nil;
    if (!bind(segment, batch, &error)) {
      NSLog(@"dynrt coreml: segment %@ at batch %u: cannot make views: %@", segment.name, batch, error);
      return DYNRT_BACKEND_ERROR;
    }
    NSUInteger slot = batch - 1;
    id<MLFeatureProvider> result = [segment.model predictionFromFeatures:segment.providers[slot]
                                                                 options:segment.options[slot]
                                                                   error:&error];
    if (result == nil) {
      NSLog(@"dynrt coreml: segment %@ at batch %u failed: %@", segment.name, batch, error);
      return DYNRT_BACKEND_ERROR;
    }
    NSArray<MLMultiArray*>* backings = segment.backings[slot];
    for (uint32_t i = 0; i < segment.outputs.count; ++i) {
      MLMultiArray* produced = [result featureValueForName:[NSString stringWithFormat:OUTPUT_NAME, i]].multiArrayValue;
      if (produced == backings[i]) continue;  /* written in place, into the runtime's buffer */
      /* Core ML returned the output elsewhere: copy it, if it is the size and layout we hold */
      DynrtCoreMLOperand* operand = segment.outputs[i];
      size_t expected = element_bytes(operand, batch, tile && i == 0);
      __block BOOL copied = NO;
      [produced getBytesWithHandler:^(const void* bytes, NSInteger size) {
        if (size >= 0 && (size_t)size == expected) {
          memcpy(operand.buffer, bytes, expected);
          copied = YES;
        }
      }];
      if (!copied) {
        NSLog(@"dynrt coreml: segment %@: output %u is not the %zu bytes the plan holds", segment.name, i, expected);
        return DYNRT_BACKEND_ERROR;
      }
    }
    return DYNRT_OK;
  }
}

static void release_session(void* context, void* state) {
  (void)context;
  if (state != NULL) {
    DynrtCoreMLSession* session = (__bridge_transfer DynrtCoreMLSession*)state;
    session = nil;
  }
}

static void destroy(struct dynrt_backend* backend) {
  if (backend == NULL) return;
  @autoreleasepool {
    if (backend->context != NULL) {
      DynrtCoreMLBackend* context = (__bridge_transfer DynrtCoreMLBackend*)backend->context;
      if (context.ownsCompiledURL) [[NSFileManager defaultManager] removeItemAtURL:context.compiledURL error:nil];
      context = nil;
    }
  }
  free(backend);
}

dynrt_status dynrt_coreml_backend_create(const char* package_path, uint32_t compute_units,
                                         const dynrt_backend_options* options, char* error_message,
                                         size_t error_capacity, dynrt_backend_t* backend_out) {
  (void)options;  /* threads: Core ML schedules its own work */
  if (backend_out == NULL || package_path == NULL) {
    return fail(error_message, error_capacity, DYNRT_INVALID_ARGUMENT, @"Core ML: NULL package path or backend_out");
  }
  *backend_out = NULL;
  static const MLComputeUnits units[] = {MLComputeUnitsAll, MLComputeUnitsCPUOnly, MLComputeUnitsCPUAndGPU,
                                         MLComputeUnitsCPUAndNeuralEngine};
  if (compute_units > DYNRT_COREML_CPU_AND_NEURAL_ENGINE) {
    return fail(error_message, error_capacity, DYNRT_INVALID_ARGUMENT, @"Core ML: compute units %u, expected 0..3",
                compute_units);
  }
  @autoreleasepool {
    NSString* path = [NSString stringWithUTF8String:package_path];
    BOOL folder = NO;
    if (path == nil || ![[NSFileManager defaultManager] fileExistsAtPath:path isDirectory:&folder] || !folder) {
      return fail(error_message, error_capacity, DYNRT_INVALID_ARGUMENT, @"Core ML: '%s' is not a folder (expected "
                  @"the build's model.mlpackage)", package_path);
    }
    DynrtCoreMLBackend* context = [DynrtCoreMLBackend new];
    context.units = units[compute_units];
    NSURL* url = [NSURL fileURLWithPath:path isDirectory:YES];
    if ([path.pathExtension isEqualToString:@"mlmodelc"]) {
      context.compiledURL = url;
    } else {
      NSError* error = nil;
      NSURL* compiled = [MLModel compileModelAtURL:url error:&error];
      if (compiled == nil) {
        return fail(error_message, error_capacity, DYNRT_INVALID_ARGUMENT, @"Core ML: '%s' does not compile: %@",
                    package_path, error.localizedDescription);
      }
      context.compiledURL = compiled;
      context.ownsCompiledURL = YES;
    }
    struct dynrt_backend* backend = calloc(1, sizeof *backend);
    if (backend == NULL) {
      if (context.ownsCompiledURL) [[NSFileManager defaultManager] removeItemAtURL:context.compiledURL error:nil];
      return fail(error_message, error_capacity, DYNRT_OUT_OF_MEMORY, @"Core ML: no memory for the backend");
    }
    backend->api_version = DYNRT_BACKEND_API_VERSION;
    backend->name = "coreml";
    backend->context = (__bridge_retained void*)context;
    backend->artifact = NULL; /* a folder: checked by the manifest's SHA-256s (dynrt_coreml.h) */
    backend->artifact_bytes = 0;
    backend->buffer_alignment = 0;  /* the runtime's 64 bytes: MLMultiArray views take any aligned float buffer */
    backend->buffer_tail_bytes = 0;
    backend->prepare_session = prepare_session;
    backend->prepare_segment = prepare_segment;
    backend->run_segment = run_segment;
    backend->release_session = release_session;
    backend->destroy = destroy;
    backend->parallel_for = NULL; /* Core ML runs its own threads: the runtime's work stays serial */
    backend->parallel_threads = 0;
    *backend_out = backend;
    return DYNRT_OK;
  }
}
