/*
 * A scripted NVML driver library for tests on machines without a GPU: the node loads it through
 * `--nvml-library` exactly as it loads the driver's libnvidia-ml.so.1, and the test steers what
 * it reports by rewriting the file FAKE_NVML_STATE names ("key value" lines, read on every call):
 *
 *   name, uuid, driver         strings
 *   cuda                       CUDA driver version as NVML encodes it (12040 = 12.4)
 *   total, used, free          device memory, bytes
 *   util, temp, slowdown       percent, degrees C (slowdown 0: not supported)
 *   power_mw, limit_mw         milliwatts (0: not supported)
 *   ecc                        uncorrectable ECC errors (-1: ECC off, not supported)
 *   fail                       1: every device query fails with NVML_ERROR_UNKNOWN
 *   xids, xid                  XID events delivered so far may reach `xids`, each with code `xid`
 *
 * Only the one GPU, index 0, exists. Signatures and struct layouts are those of nvml.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
typedef struct fake_device *nvmlDevice_t;
typedef struct fake_set *nvmlEventSet_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType, eventData;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

static struct fake_device { int unused; } the_gpu;
static struct fake_set { int unused; } the_set;
static long long delivered_xids;

struct state {
    char name[96], uuid[96], driver[96];
    long long cuda, total, used, free, util, temp, slowdown, power_mw, limit_mw, ecc, fail, xids,
        xid;
};

static struct state read_state(void) {
    struct state s = {"NVIDIA Fake", "GPU-00000000-fake", "550.54.15", 12040, 80LL << 30,
                      1LL << 30, 79LL << 30, 0, 40, 90, 250000, 700000, 0, 0, 0, 0};
    const char *path = getenv("FAKE_NVML_STATE");
    FILE *f = path ? fopen(path, "r") : NULL;
    char key[32], value[96];
    while (f && fscanf(f, "%31s %95s", key, value) == 2) {
        long long n = atoll(value);
        if (!strcmp(key, "name")) snprintf(s.name, sizeof s.name, "%s", value);
        else if (!strcmp(key, "uuid")) snprintf(s.uuid, sizeof s.uuid, "%s", value);
        else if (!strcmp(key, "driver")) snprintf(s.driver, sizeof s.driver, "%s", value);
        else if (!strcmp(key, "cuda")) s.cuda = n;
        else if (!strcmp(key, "total")) s.total = n;
        else if (!strcmp(key, "used")) s.used = n;
        else if (!strcmp(key, "free")) s.free = n;
        else if (!strcmp(key, "util")) s.util = n;
        else if (!strcmp(key, "temp")) s.temp = n;
        else if (!strcmp(key, "slowdown")) s.slowdown = n;
        else if (!strcmp(key, "power_mw")) s.power_mw = n;
        else if (!strcmp(key, "limit_mw")) s.limit_mw = n;
        else if (!strcmp(key, "ecc")) s.ecc = n;
        else if (!strcmp(key, "fail")) s.fail = n;
        else if (!strcmp(key, "xids")) s.xids = n;
        else if (!strcmp(key, "xid")) s.xid = n;
    }
    if (f) fclose(f);
    return s;
}

static nvmlReturn_t copy(char *out, unsigned int length, const char *text) {
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

#define DEVICE_QUERY(s)                                   \
    struct state s = read_state();                        \
    if (device != &the_gpu) return NVML_ERROR_INVALID_ARGUMENT; \
    if (s.fail) return NVML_ERROR_UNKNOWN

nvmlReturn_t nvmlInit_v2(void) { return NVML_SUCCESS; }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return NVML_SUCCESS; }
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy(version, length, read_state().driver);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    *version = (int)read_state().cuda;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    *count = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (index != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &the_gpu;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    if (strcmp(uuid, read_state().uuid)) return NVML_ERROR_NOT_FOUND;
    *device = &the_gpu;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    if (device != &the_gpu) return NVML_ERROR_INVALID_ARGUMENT;
    *index = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE_QUERY(s);
    return copy(name, length, s.name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE_QUERY(s);
    return copy(uuid, length, s.uuid);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    DEVICE_QUERY(s);
    memory->total = s.total;
    memory->used = s.used;
    memory->free = s.free;
    memory->reserved = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    DEVICE_QUERY(s);
    u->gpu = (unsigned int)s.util;
    u->memory = (unsigned int)s.util;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    DEVICE_QUERY(s);
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = (unsigned int)s.temp;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, int kind, unsigned int *temp) {
    DEVICE_QUERY(s);
    if (kind != 1) return NVML_ERROR_INVALID_ARGUMENT; /* NVML_TEMPERATURE_THRESHOLD_SLOWDOWN */
    if (s.slowdown == 0) return NVML_ERROR_NOT_SUPPORTED;
    *temp = (unsigned int)s.slowdown;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *mw) {
    DEVICE_QUERY(s);
    if (s.power_mw == 0) return NVML_ERROR_NOT_SUPPORTED;
    *mw = (unsigned int)s.power_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *mw) {
    DEVICE_QUERY(s);
    if (s.limit_mw == 0) return NVML_ERROR_NOT_SUPPORTED;
    *mw = (unsigned int)s.limit_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int type, int counter,
                                         unsigned long long *count) {
    DEVICE_QUERY(s);
    /* NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC */
    if (type != 1 || counter != 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (s.ecc < 0) return NVML_ERROR_NOT_SUPPORTED;
    *count = (unsigned long long)s.ecc;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    if (device != &the_gpu) return NVML_ERROR_INVALID_ARGUMENT;
    *types = 0x2 | 0x8; /* double-bit ECC, critical XID */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    *set = &the_set;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                      nvmlEventSet_t set) {
    if (device != &the_gpu || set != &the_set || (types & ~0xAULL)) return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int ms) {
    if (set != &the_set) return NVML_ERROR_INVALID_ARGUMENT;
    struct timespec step = {0, 20 * 1000 * 1000};
    for (unsigned int waited = 0;; waited += 20) {
        struct state s = read_state();
        if (delivered_xids < s.xids) {
            delivered_xids++;
            memset(data, 0, sizeof *data);
            data->device = &the_gpu;
            data->eventType = 0x8;
            data->eventData = (unsigned long long)s.xid;
            return NVML_SUCCESS;
        }
        if (waited >= ms) return NVML_ERROR_TIMEOUT;
        nanosleep(&step, NULL);
    }
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    (void)set;
    return NVML_SUCCESS;
}
