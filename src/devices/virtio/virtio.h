// Numbers from the virtio 1.x specification (OASIS virtio v1.1/v1.2): device
// types, status bits, transport feature bits, the split ring's layout, and
// the PCI transport's capability types. Written from the specification text.
#pragma once
#include "base/types.h"

namespace popek::dev::virtio {

// Device types (section 5). The modern PCI device ID is 0x1040 + type.
enum class DeviceType : u16 { net = 1, blk = 2, console = 3, rng = 4 };

// Device status field (2.1).
inline constexpr u8 kStatusAcknowledge = 1, kStatusDriver = 2, kStatusDriverOk = 4,
                    kStatusFeaturesOk = 8, kStatusNeedsReset = 64, kStatusFailed = 128;

// Reserved (transport) feature bits (6).
inline constexpr unsigned kFIndirectDesc = 28, kFEventIdx = 29, kFVersion1 = 32,
                          kFAccessPlatform = 33, kFRingPacked = 34, kFInOrder = 35,
                          kFNotificationData = 38;
inline constexpr u64 bit(unsigned n) { return 1ull << n; }

// Split virtqueue (2.7).
inline constexpr u16 kDescFNext = 1, kDescFWrite = 2, kDescFIndirect = 4;
inline constexpr u16 kAvailFNoInterrupt = 1;
inline constexpr u16 kUsedFNoNotify = 1;
inline constexpr u32 kDescSize = 16;       // le64 addr, le32 len, le16 flags, le16 next
inline constexpr u32 kUsedElemSize = 8;    // le32 id, le32 len
inline constexpr u16 kMaxQueueSize = 32768;
// Ring sizes for a queue of n entries, including the event-index word.
inline constexpr u64 desc_table_bytes(u16 n) { return u64(n) * kDescSize; }
inline constexpr u64 avail_ring_bytes(u16 n) { return 6 + 2 * u64(n); }
inline constexpr u64 used_ring_bytes(u16 n) { return 6 + 8 * u64(n); }

// ISR status bits (4.1.4.5).
inline constexpr u8 kIsrQueue = 1, kIsrConfig = 2;

// PCI transport (4.1): vendor, capability types.
inline constexpr u16 kPciVendor = 0x1AF4;
inline constexpr u16 kPciModernDeviceBase = 0x1040;
inline constexpr u8 kPciCapVendor = 0x09;
inline constexpr u8 kPciCapCommon = 1, kPciCapNotify = 2, kPciCapIsr = 3, kPciCapDevice = 4,
                    kPciCapPciCfg = 5;
inline constexpr u16 kNoVector = 0xFFFF;  // MSI-X vector "none"

}  // namespace popek::dev::virtio
