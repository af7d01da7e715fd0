export { GroupManager, type GroupView, type GroupMember, type GroupManagerOptions } from './group-manager.js'
export { decide, onMembers, onView, initialGroupState, type GroupState, type ElectionTimings } from './election.js'
